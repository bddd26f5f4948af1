"""Tessera: a GPU-sharing, cloud-native AI job platform."""

__version__ = "0.1.0"
