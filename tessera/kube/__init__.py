"""Kubernetes: Tessera's backend on a cluster (pods bound through the Binding API), its secondary
scheduler for pods created by others, and the node side (device plugin, pod attribution)."""
