"""Fluid-style dataset caches: sources through fsspec (source.py); node caches, loads and peer
reads come with the node agent's side."""
