# syntax=docker/dockerfile:1
# Tessera's control plane (API, scheduler, controllers): `tessera up` with the Kubernetes backend.
# Build from the repository root (docker/controlplane.Dockerfile.dockerignore limits the context):
#   docker build -f docker/controlplane.Dockerfile -t REGISTRY/tessera-controlplane:VERSION .
# The base is pinned by tag; pin it by digest (python:3.11.13-slim-bookworm@sha256:...) in a
# release pipeline.
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

# Build stage: the package and its dependencies into a virtual environment; no compiler is needed
# (every dependency ships manylinux wheels), and pip, its cache and the sources stay behind.
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/tessera
WORKDIR /src
COPY pyproject.toml README.md ./
COPY tessera ./tessera
RUN /opt/tessera/bin/pip install ".[k8s,s3]"

FROM ${PYTHON_IMAGE}
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="tessera-controlplane" \
      org.opencontainers.image.description="Tessera control plane" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/tessera/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    TESSERA_HOME=/var/lib/tessera
# uid/gid 10001 match the chart's runAsUser/fsGroup; TESSERA_HOME is the chart's volume
RUN groupadd --system --gid 10001 tessera \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/tessera --no-create-home \
      --shell /usr/sbin/nologin tessera \
 && install -d -o 10001 -g 10001 -m 0750 /var/lib/tessera
COPY --from=build /opt/tessera /opt/tessera
USER 10001:10001
WORKDIR /var/lib/tessera
EXPOSE 8080
CMD ["tessera", "up", "--host", "0.0.0.0", "--port", "8080", "--no-agent", "--no-gateway"]
