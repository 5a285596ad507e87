# syntax=docker/dockerfile:1
# One image for every Pagewire service; each Kubernetes Deployment picks its
# service with its command (`python -m services.<name>`), the migration Job runs
# `pagewire db upgrade`.
#
#   docker build -t pagewire:0.1.0 .
#   docker run --rm pagewire:0.1.0 python -m services.router
#
# Both stages use the same base so the virtual environment built in the first
# runs unchanged in the second (its interpreter is the base image's).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- build: dependencies, generated gRPC stubs, the package itself ----------
FROM ${PYTHON_IMAGE} AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

# The stub generator lives in its own environment: it is a build tool, not a
# runtime dependency, and never reaches the final stage.
WORKDIR /src
COPY constraints.txt ./
RUN python -m venv /opt/protoc \
    && /opt/protoc/bin/pip install --quiet -c constraints.txt grpcio-tools

COPY protos/ protos/
COPY pyproject.toml README.md ./
COPY pagewire/ pagewire/
COPY services/ services/

# The same generation as `make protos`: stubs under pagewire/proto/, their
# absolute imports rewritten so `pagewire.events.v1` resolves inside pagewire.proto.
# (tests/deploy checks that these flags and this rewrite match the Makefile.)
RUN rm -rf pagewire/proto/pagewire \
    && /opt/protoc/bin/python -m grpc_tools.protoc -Iprotos --python_out=pagewire/proto \
        --pyi_out=pagewire/proto --grpc_python_out=pagewire/proto \
        $(find protos -name '*.proto' | sort) \
    && find pagewire/proto/pagewire -name '*.py' -o -name '*.pyi' | \
        xargs sed -i -E 's/^from pagewire\.([a-z_]+)\.v1 import/from pagewire.proto.pagewire.\1.v1 import/'

# A regular (not editable) install: the packages, their migrations and the
# generated stubs land in the environment's site-packages. Every pinned
# dependency ships wheels, so no compiler is needed in this stage either.
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --quiet -c constraints.txt . \
    && /opt/venv/bin/python -c "import pagewire.proto, services.gateway.app" \
    && test -d "$(/opt/venv/bin/python -c 'import services, os; print(os.path.dirname(services.__file__))')/router/migrations/versions"

# ---- runtime: the environment only, as a fixed non-root user ----------------
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="pagewire" \
      org.opencontainers.image.description="Messenger and Instagram webhooks routed into conversations (gateway, router, tokens, subscriptions)" \
      org.opencontainers.image.licenses="Proprietary"

# A fixed uid/gid so Kubernetes' runAsNonRoot can verify it and fsGroup matches.
RUN groupadd --system --gid 10001 pagewire \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin pagewire

COPY --from=build /opt/venv /opt/venv

# The root filesystem is read-only in Kubernetes: no bytecode written at run
# time (pip compiled it at install), logs unbuffered to stdout, /tmp an emptyDir.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PAGEWIRE_GRPC_HOST=0.0.0.0 \
    PAGEWIRE_GATEWAY_HOST=0.0.0.0

WORKDIR /app
USER 10001:10001

# gateway HTTP, then router, tokens, subscriptions gRPC.
EXPOSE 8080 50051 50052 50053

# Each Deployment sets its own command; this default starts the gateway.
CMD ["python", "-m", "services.gateway"]
