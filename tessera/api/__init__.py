"""The wire contract: pydantic models of every Tessera resource."""
