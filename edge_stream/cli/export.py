"""`edge-stream inspect` and `edge-stream export` subcommands.

`inspect` needs only the runtime (onnxruntime, numpy). `export` needs the
export extra (torch, transformers, optimum-onnx, onnx), imported only when run.
Each command's `func(args)` returns the process exit status.
"""

from __future__ import annotations

import json
import sys

from edge_stream.errors import ManifestError


def add_commands(subparsers) -> None:
    """Register `inspect` and `export` on the top-level CLI's subparsers."""
    p = subparsers.add_parser("inspect", help="print a model's I/O and its draft manifest",
                              description="Print an ONNX model's inputs/outputs and the manifest derived "
                                          "from their names (optimum, onnxruntime-genai, silero-style state).")
    p.add_argument("model", help="MODEL.onnx or a model directory")
    p.add_argument("--write", action="store_true", help="save the draft as manifest.json beside the model")
    p.set_defaults(func=run_inspect)

    p = subparsers.add_parser("export", help="export a model to an edge-stream model directory",
                              description="Export a model; every export ends with a parity check.")
    try:
        from export.hf import add_arguments  # stdlib + numpy at import; torch loads when it runs
    except ModuleNotFoundError as exc:  # a runtime-only install without the export/ scripts
        p.set_defaults(func=lambda args, error=exc: _no_export(error))  # `exc` is unbound after except
        return
    sources = p.add_subparsers(dest="source", metavar="SOURCE", required=True)
    hf = sources.add_parser("hf", help="Hugging Face causal LM via optimum-onnx or onnxruntime-genai's builder",
                            description="Export a Hugging Face causal LM (local folder, or hub id where a "
                                        "network exists) to model.onnx + manifest.json + tokenizer files.")
    add_arguments(hf)
    hf.set_defaults(func=run_export_hf)


def _no_export(exc) -> int:
    print(f"error: export needs the export/ scripts and extra "
          f"(pip install -c constraints.txt 'edge-stream[export]'): {exc}", file=sys.stderr)
    return 2


def run_inspect(args) -> int:
    from edge_stream.runtime.introspect import describe, draft_manifest, resolve_model_file

    try:
        info = describe(args.model)
    except ManifestError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(info.table())
    try:
        manifest = draft_manifest(args.model)
    except ManifestError as exc:
        print(f"\nno draft manifest: {exc}", file=sys.stderr)
        return 1
    print("\ndraft manifest:")
    print(json.dumps(manifest.to_dict(), indent=2))
    if args.write:
        path = manifest.save(resolve_model_file(args.model).parent)
        print(f"\nwrote {path}")
    return 0


def run_export_hf(args) -> int:
    from export.hf import run
    from export.parity import progress_logging

    progress_logging()
    try:
        return run(args)
    except ImportError as exc:  # torch, transformers, optimum-onnx or onnx missing
        return _no_export(exc)
