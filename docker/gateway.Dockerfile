# syntax=docker/dockerfile:1
# Tessera's serving gateway: `tessera gateway` routes /serve/NAME/ to ready replicas.
# Build from the repository root (docker/gateway.Dockerfile.dockerignore limits the context):
#   docker build -f docker/gateway.Dockerfile -t REGISTRY/tessera-gateway:VERSION .
# The base is pinned by tag; pin it by digest in a release pipeline.
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

# Build stage: the package (no extras: the gateway needs neither the Kubernetes API nor NVML)
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/tessera
WORKDIR /src
COPY pyproject.toml README.md ./
COPY tessera ./tessera
RUN /opt/tessera/bin/pip install .

FROM ${PYTHON_IMAGE}
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="tessera-gateway" \
      org.opencontainers.image.description="Tessera serving gateway" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/tessera/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
RUN groupadd --system --gid 10001 tessera \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin tessera
COPY --from=build /opt/tessera /opt/tessera
USER 10001:10001
EXPOSE 8000
# the chart passes --url and --token-file (the gateway-scope token from its Secret)
CMD ["tessera", "gateway", "--host", "0.0.0.0", "--port", "8000"]
