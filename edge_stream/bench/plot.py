"""PNG plots of a bench report (the `plot` extra: matplotlib). Reads only the JSON-ready report,
so `python -m edge_stream.bench.plot report.json DIR` redraws a saved run."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# One colour per model file, solid = ours, dashed = peers (genai-X runs ours-gqa-X's file).
_COLOURS = {"ours-fp32": "C0", "ours-int8": "C1", "ours-gqa-fp32": "C2", "genai-fp32": "C2",
            "ours-gqa-int8": "C3", "genai-int8": "C3", "ours-gqa-int4": "C4", "genai-int4": "C4",
            "torch-fp32": "C7"}


def _style(name: str) -> dict:
    return {"color": _COLOURS.get(name, "k"), "linestyle": "-" if name.startswith("ours") else "--"}


def _machine(report: dict) -> str:
    m = report["machine"]
    return f"{m['cpu']}, {m['usable_cores']} cores, {m['intra_op_threads']} threads, onnxruntime {m['onnxruntime']}"


def write_plots(report: dict, out_dir: Path) -> tuple[list[Path], str | None]:
    """bench-ttft.png (TTFT vs input length, streamed and batch, every engine) and
    bench-stream.png (chunk latency along a long stream; the sliding window's when run).
    Returns (files written, why none were) ."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return [], "matplotlib is not installed (pip install -c constraints.txt 'edge-stream[plot]')"
    out_dir.mkdir(parents=True, exist_ok=True)
    res, written = report["results"], []
    if "ttft" in res:
        r = res["ttft"]
        fig, ax = plt.subplots(figsize=(8, 5))
        for name, e in r["engines"].items():
            xs = r["lengths"]
            ax.plot(xs, [e["streamed_ms"][str(n)]["p50"] for n in xs], marker="o", label=f"{name} streamed", **_style(name))
            ax.plot(xs, [e["batch_ms"][str(n)]["p50"] for n in xs], marker="s", alpha=0.5,
                    label=f"{name} batch", **{**_style(name), "linestyle": ":"})
        ax.set(xscale="log", yscale="log", xlabel="input tokens", ylabel="time to first token, ms (p50)",
               title=f"TTFT after the end of the input: streamed ({r['chunk']}-token chunks) vs batch")
        from matplotlib.ticker import NullFormatter, ScalarFormatter

        ax.set_xticks(r["lengths"], [str(n) for n in r["lengths"]])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.yaxis.set_major_formatter(ScalarFormatter())
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
        fig.text(0.01, 0.01, _machine(report), fontsize=7)
        path = out_dir / "bench-ttft.png"
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        written.append(path)
    if "ttft" in res or "window" in res:
        panels = [k for k in ("ttft", "window") if k in res]
        fig, axes = plt.subplots(len(panels), 1, figsize=(8, 4 * len(panels)), squeeze=False)
        for ax, key in zip(axes[:, 0], panels):
            if key == "ttft":
                for name, e in res["ttft"]["engines"].items():
                    trace = e["chunk_trace"]
                    ax.plot([t for t, _ in trace], [ms for _, ms in trace], label=name, lw=1, **_style(name))
                ax.set(xlabel="tokens in the stream", ylabel="ms per 16-token chunk (log)", yscale="log",
                       title="chunk latency as the context grows (no window; first pass)")
            else:
                ax2 = ax.twinx()  # one RSS axis for every build: same units, one scale
                for precision, w in res["window"].items():
                    trace = w["trace_tokens_ms_rss_mb"]
                    name = f"ours-{precision}"
                    ax.plot([t[0] for t in trace], [t[1] for t in trace], label=f"{name} latency", lw=1,
                            color=_style(name)["color"])
                    ax2.plot([t[0] for t in trace], [t[2] for t in trace], lw=1, linestyle=":",
                             color=_style(name)["color"], label=f"{name} RSS")
                    ax.set(xlabel="tokens streamed", ylabel="ms per chunk (median per bucket)",
                           title=f"endless stream: sliding window {w['kv_window']} + {w['sink_tokens']} sinks")
                ax2.set_ylabel("process RSS, MB (dotted)")
                ax2.legend(fontsize=7, loc="center right")
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=7)
        fig.text(0.01, 0.0, _machine(report), fontsize=7)
        fig.tight_layout()
        path = out_dir / "bench-stream.png"
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        written.append(path)
    return written, None if written else "the report has no ttft or window results"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("report", type=Path)
    p.add_argument("out_dir", type=Path)
    args = p.parse_args(argv)
    written, reason = write_plots(json.loads(args.report.read_text()), args.out_dir)
    print(f"wrote {', '.join(map(str, written))}" if written else f"no plots: {reason}")
    return 0 if written else 1


if __name__ == "__main__":
    sys.exit(main())
