"""`edge-stream voice-demo`: the three-node voice pipeline on committed WAVs (or a live microphone).

Starts the VAD, recognizer and parser nodes of launch/voice_commands.toml as separate
processes (`edge-stream run LAUNCH --only NAME`), plays held-out-voice WAVs
(tests/data/commands) into the VAD in real time with silence between them, and prints
each command field and command while the audio is still playing, then a summary with
the latency from the true end of speech (known from the WAVs' word timings). With
`--mic`, audio comes from the default sound device (`arecord`, or the `sounddevice`
package) until Ctrl-C. The pipeline itself (processes, playlist, replay) is
cli/voice_pipeline.py, which `edge-stream voice-report` measures too.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import threading

import numpy as np

from edge_stream.cli.voice_pipeline import (
    DEFAULT_WAVS, MIC_STREAM, MIC_TOPIC, SAMPLE_RATE, NodeProcesses, Playlist, Topology, committed_clips, match,
    run_pipeline, wav_clips,
)
from edge_stream.errors import ConfigError

DEFAULT_LAUNCH = "launch/voice_commands.toml"


def add_commands(subparsers) -> None:
    """Register voice-demo and voice-controller (registered by edge_stream.cli.main)."""
    p = subparsers.add_parser("voice-demo", help="VAD -> recognizer -> parser nodes on committed WAVs "
                                                 "(or --mic), printing commands as they arrive")
    p.add_argument("wavs", nargs="*", help=f"16 kHz mono WAVs (default: {DEFAULT_WAVS}/*.wav)")
    p.add_argument("--launch", default=DEFAULT_LAUNCH)
    p.add_argument("--gap-s", type=float, default=1.0, help="silence between WAVs, seconds")
    p.add_argument("--chunk-ms", type=float, default=32.0)
    p.add_argument("--mic", action="store_true", help="live microphone instead of WAVs (arecord or sounddevice)")
    p.set_defaults(func=cmd_voice_demo)

    p = subparsers.add_parser("voice-controller", help="print commands from the parser node as they arrive")
    p.add_argument("--connect", action="append", default=[], help="parser node output (default tcp://127.0.0.1:5581)")
    p.add_argument("--count", type=int, default=0, help="exit after this many commands (0: never)")
    p.add_argument("--timeout", type=float, default=0.0, help="exit after this many idle seconds (0: never)")
    p.set_defaults(func=cmd_voice_controller)


# ----- commands -----------------------------------------------------------------------------------


def cmd_voice_controller(args) -> int:
    from edge_stream.cli.controller import run_controller

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    run_controller(args.connect or ["tcp://127.0.0.1:5581"], count=args.count, timeout=args.timeout, stop=stop,
                   on_line=lambda s: print(s, flush=True))
    return 0


def cmd_voice_demo(args) -> int:
    if args.mic:
        return _live(args)
    clips = wav_clips(args.wavs) if args.wavs else committed_clips()
    playlist = Playlist.build(clips, args.gap_s)
    print(f"voice demo: {len(clips)} WAVs, {len(playlist.audio) / SAMPLE_RATE:.1f} s of audio in real time; "
          f"starting the nodes of {args.launch}", flush=True)
    records, t0_ns = run_pipeline(args.launch, playlist, args.chunk_ms, on_line=lambda s: print(s, flush=True))
    print("\nsummary (latency from the end of the last word, from the WAVs' word timings):")
    print(f"{'file':<14} {'said':<30} {'command':<22} {'known ms':>9} {'done ms':>8}")
    ok = 0
    for u in playlist.utterances:
        recs = [r for r in match(records, playlist, t0_ns)[u.name] if r.command]
        r = recs[-1] if recs else None
        end = u.end_ns(t0_ns)
        known = f"{(r.t_known_pub_ns - end) / 1e6:+9.0f}" if r and r.t_known_pub_ns else f"{'-':>9}"
        done = f"{(r.t_done_pub_ns - end) / 1e6:+8.0f}" if r else f"{'-':>8}"
        mark = "" if u.expected is None else ("  ok" if r and r.command == u.expected else f"  expected {u.expected!r}")
        ok += bool(r and r.command == u.expected)
        print(f"{u.name:<14} {u.text[:30]:<30} {(r.command if r else '(none)'):<22} {known} {done}{mark}")
    if any(u.expected for u in playlist.utterances):
        print(f"{ok}/{len(playlist.utterances)} commands as meant")
    return 0


def _live(args) -> int:
    """Microphone -> pipeline until Ctrl-C: arecord (ALSA) if present, else the sounddevice package."""
    from edge_stream.cli.controller import run_controller
    from edge_stream.node.client import Publisher

    topo = Topology.from_launch(args.launch)
    chunk = int(SAMPLE_RATE * args.chunk_ms / 1000)
    if shutil.which("arecord"):
        source = subprocess.Popen(["arecord", "-q", "-t", "raw", "-f", "S16_LE", "-c", "1", "-r", str(SAMPLE_RATE)],
                                  stdout=subprocess.PIPE)
        read = lambda: np.frombuffer(source.stdout.read(2 * chunk), dtype="<i2")  # noqa: E731
        close = source.terminate
    else:
        try:
            import sounddevice
        except ImportError:
            raise ConfigError("--mic needs a sound device: install alsa-utils (arecord) or the sounddevice "
                              "package") from None
        stream = sounddevice.InputStream(samplerate=SAMPLE_RATE, channels=1, dtype="int16", blocksize=chunk)
        stream.start()
        read = lambda: stream.read(chunk)[0][:, 0]  # noqa: E731
        close = stream.close
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with NodeProcesses(args.launch, topo.nodes):
        ctl = threading.Thread(target=run_controller, args=([topo.sink_output],),
                               kwargs={"stop": stop, "on_line": lambda s: print(s, flush=True)}, daemon=True)
        ctl.start()
        pub = Publisher(MIC_TOPIC, connect=[topo.source_input])
        pub.wait_ready(10.0)
        print("listening: speak a command (Ctrl-C stops)", flush=True)
        try:
            while not stop.is_set():
                pcm = read()
                if not len(pcm):
                    break
                pub.send(pcm, stream=MIC_STREAM, sr=SAMPLE_RATE)
        finally:
            close()
            pub.close()
            stop.set()
            ctl.join(2.0)
    return 0
