"""Execution backends (local agents; Kubernetes and Ray later)."""
