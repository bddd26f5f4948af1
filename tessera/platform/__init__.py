"""The control plane: FastAPI app, services, store, controllers and backends."""
