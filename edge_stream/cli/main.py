"""`edge-stream` command line: each module registers its own subcommands.

Modules that need torch (export) import it inside their commands, so the
node's commands work on a robot without torch.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from edge_stream.errors import EdgeStreamError

# Modules with an `add_commands(subparsers)` function, in help order.
COMMAND_MODULES = (
    "edge_stream.cli.demo",
    "edge_stream.cli.node",
    "edge_stream.cli.export",
    "edge_stream.bench.run",
    "edge_stream.cli.voice_demo",
    "edge_stream.cli.voice_report",
)


class CliParser(argparse.ArgumentParser):
    """argparse with its usage errors on one line (`edge-stream run: error: ...`), exit status 2;
    subcommand parsers are of this class too (argparse makes them with the parent's class)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = CliParser(prog="edge-stream", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:  # a real missing dependency inside the module: say so
                raise
            continue  # that part of the package is not installed in this build
        module.add_commands(sub)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except EdgeStreamError as exc:
        print(f"edge-stream: {_one_line(exc)}", file=sys.stderr)
        return 2
    except OSError as exc:  # a file or folder named on the command line is missing or unreadable
        where = f": {exc.filename}" if exc.filename else ""
        print(f"edge-stream {args.command}: {exc.strerror or exc}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _one_line(exc: Exception) -> str:
    """An error message on one line (a model builder's or a TOML parser's may span several)."""
    return " | ".join(line.strip() for line in str(exc).splitlines() if line.strip())


if __name__ == "__main__":
    raise SystemExit(main())
