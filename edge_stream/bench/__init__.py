"""Benchmarks: `python -m edge_stream.bench` (see docs/benchmarks.md)."""
