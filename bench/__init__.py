"""Benchmark scripts: run each with `python -m bench.<name>`; they print tables and exit 0."""
