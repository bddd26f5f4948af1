"""The inference gateway data plane: routes ``/serve/NAME/...`` to ready model-server replicas and
reports traffic to the control plane, which answers with the route table (see ``app.Gateway``)."""

from tessera.gateway.app import Gateway

__all__ = ["Gateway"]
