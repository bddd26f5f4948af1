"""The web UI: static files served at / and /static (no JS build step)."""
