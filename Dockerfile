# One image for the whole Alliance suite; the service is chosen by the command:
#   docker build -t alliance:dev .
#   docker run --rm -e DATABASE_URL=sqlite:////tmp/points.db -v "$PWD/rules/campaigns:/etc/alliance/rules/campaigns:ro" \
#     -p 50051:50051 -p 9464:9464 alliance:dev                     # = alliance serve points
#   docker run --rm alliance:dev serve --help
# Kubernetes manifests: deploy/ (deploy/README.md).

# Pinned by tag (patch release and Debian release); release builds may add @sha256:<digest>.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# ---------------------------------------------------------------------------------------------
# builder: compilers, protoc, and the venv that the runtime stage copies
# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# durable-rules is an sdist with a C extension: it needs gcc here (and never in the runtime stage).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src

# Code generation tools in a venv of their own, so they stay out of the runtime venv.
COPY constraints.txt ./
# hadolint ignore=DL3013
RUN python -m venv /opt/codegen \
    && /opt/codegen/bin/pip install --no-cache-dir -c constraints.txt grpcio-tools mypy-protobuf

# gen/alliance/v1/*_pb2*.py(i) from protos/ (pyproject maps gen/alliance to the package `alliance`).
# protoc-gen-mypy* are found on PATH.
COPY protos/ protos/
RUN mkdir gen \
    && PATH="/opt/codegen/bin:${PATH}" /opt/codegen/bin/python -m grpc_tools.protoc -Iprotos \
        --python_out=gen --grpc_python_out=gen --mypy_out=gen --mypy_grpc_out=gen \
        protos/alliance/v1/*.proto \
    && touch gen/alliance/__init__.py gen/alliance/v1/__init__.py gen/alliance/py.typed

# The runtime venv. Dependencies first, in their own layer (durable-rules compiles for a while),
# so that a change to services/ does not rebuild them; all versions from constraints.txt.
COPY pyproject.toml README.md ./
# hadolint ignore=DL3013
RUN python -m venv /opt/venv \
    && python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && /opt/venv/bin/pip install --no-cache-dir -c constraints.txt -r /tmp/requirements.txt

COPY services/ services/
# hadolint ignore=DL3013
RUN /opt/venv/bin/pip install --no-cache-dir -c constraints.txt . \
    && /opt/venv/bin/alliance --help > /dev/null \
    && /opt/venv/bin/python -c "import alliance.v1.points_pb2_grpc, durable.lang"

# ---------------------------------------------------------------------------------------------
# runtime: the venv, the rule-file schema, a non-root user; no compilers, no protoc
# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="alliance" \
      org.opencontainers.image.description="Alliance gRPC services (points, later referral, dispatch, merchant_eval); choose one with: serve NAME" \
      org.opencontainers.image.licenses="Apache-2.0"

# A numeric UID/GID so that Kubernetes can verify runAsNonRoot without a passwd lookup.
RUN groupadd --system --gid 10001 alliance \
    && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
        --shell /usr/sbin/nologin alliance \
    && mkdir -p /etc/alliance/rules/campaigns /etc/alliance/rules/referral

# Same base image and same path as in the builder, so the venv's interpreter links and script
# shebangs (#!/opt/venv/bin/python) hold. Bytecode was compiled by pip at install time.
COPY --from=builder /opt/venv /opt/venv
COPY rules/schema/ /app/rules/schema/

# Read-only root filesystem: nothing is written except /tmp and data volumes that are mounted.
# RULES_DIR/campaigns is empty in the image: rule files are mounted (a ConfigMap in Kubernetes).
# DATABASE_URL has no usable default here: set it (PostgreSQL, or SQLite on a mounted volume).
ENV PATH="/opt/venv/bin:${PATH}" \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONFAULTHANDLER=1 \
    HOME=/tmp \
    GRPC_HOST=0.0.0.0 \
    RULES_DIR=/etc/alliance/rules \
    ALLIANCE_SCHEMA_DIR=/app/rules/schema

WORKDIR /app
USER 10001:10001

# gRPC (health included: grpc.health.v1) and Prometheus /metrics of points. No HEALTHCHECK:
# Kubernetes probes gRPC health directly.
EXPOSE 50051 50052 9464 9465

# exec form: `alliance` is PID 1 and gets SIGTERM itself (graceful drain, SHUTDOWN_GRACE_SECONDS).
ENTRYPOINT ["alliance"]
CMD ["serve", "points"]
