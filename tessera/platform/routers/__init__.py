"""Thin routers: parse, call a service, return."""
