"""The `edge-stream` command line: `main` plus one module per command group."""

from edge_stream.cli.main import main

__all__ = ["main"]
