"""Fluid-style dataset caches: sources through fsspec (source.py), a node's cache (cache.py), peer
reads (peers.py), stream mode's block cache (blocks.py) and ``open()`` for tasks (stream.py)."""

from tessera.datacache.stream import open

__all__ = ["open"]
