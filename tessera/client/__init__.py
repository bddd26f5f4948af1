"""Python SDK over HTTP; uses the same request/response models as the server."""

from tessera.client.client import ApiError, Client, Unreachable
from tessera.client.config import ClientConfig, resolve

__all__ = ["ApiError", "Client", "ClientConfig", "Unreachable", "resolve"]
