"""Control-plane services: the logic behind the routers, one concern per module."""
