"""Benchmarks for the Tessera control plane (run as ``python -m bench.<name>``)."""
