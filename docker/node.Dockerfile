# syntax=docker/dockerfile:1
# Tessera's node agent on Kubernetes GPU nodes: `tessera node --kubernetes` serves Tessera's device
# plugin to the kubelet and measures and enforces GPU slices through NVML.
# Build from the repository root (docker/node.Dockerfile.dockerignore limits the context):
#   docker build -f docker/node.Dockerfile -t REGISTRY/tessera-node:VERSION .
# The base is pinned by tag; pin it by digest in a release pipeline.
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

# Build stage: the package with the Kubernetes (device plugin gRPC), NVML and S3 (dataset caches)
# extras. nvidia-ml-py is only the Python binding: libnvidia-ml.so comes from the host's driver.
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/tessera
WORKDIR /src
COPY pyproject.toml README.md ./
COPY tessera ./tessera
RUN /opt/tessera/bin/pip install ".[k8s,nvml,s3]"

FROM ${PYTHON_IMAGE}
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="tessera-node" \
      org.opencontainers.image.description="Tessera node agent and device plugin" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/tessera/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    TESSERA_HOME=/var/lib/tessera/node \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
COPY --from=build /opt/tessera /opt/tessera
# root, on purpose: the agent serves a socket in the kubelet's root-owned device-plugins directory
# and, with the host's PID namespace, reads other pods' /proc/PID/cgroup and signals their
# processes. The chart keeps it unprivileged with every capability dropped but KILL.
# hadolint ignore=DL3002
USER 0:0
# the chart passes --url and --token-file (the node-scope token from its Secret)
CMD ["tessera", "node", "--kubernetes"]
