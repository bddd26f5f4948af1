"""Python SDK over HTTP; uses the same request/response models as the server. ``Client`` is
synchronous, ``AsyncClient`` (tessera.client.aio) is for asyncio."""

from tessera.client.aio import AsyncClient
from tessera.client.client import ApiError, Client, Unreachable
from tessera.client.config import ClientConfig, resolve

__all__ = ["ApiError", "AsyncClient", "Client", "ClientConfig", "Unreachable", "resolve"]
