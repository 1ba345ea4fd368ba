# syntax=docker/dockerfile:1
# remediator's image: `docker build -t remediator:0.1.0 .`
# Two stages: the builder turns the project and its runtime dependencies into wheels; the
# runtime installs only those wheels (no compiler, no dev tools, no source tree) into a venv and
# runs as an unprivileged numeric user, as the chart's runAsNonRoot requires.
# tests/deploy/test_dockerfile.py builds the same wheel and installs it the same way.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# Only what the wheel is built from (.dockerignore keeps the rest out of the context).
COPY pyproject.toml README.md ./
COPY remediator ./remediator
# The project's wheel plus a wheel for every runtime dependency; the [dev] extra is not asked for.
RUN pip wheel --wheel-dir /wheels .

FROM ${PYTHON_IMAGE} AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/remediator/bin:$PATH
# Installed from the builder's wheels only (--no-index): nothing is fetched at this stage, and
# the wheels themselves never land in a layer.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    python -m venv /opt/remediator \
    && /opt/remediator/bin/pip install --no-index --find-links=/wheels remediator \
    && /opt/remediator/bin/pip uninstall --yes pip \
    && groupadd --system --gid 10001 remediator \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin remediator \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/remediator
WORKDIR /var/lib/remediator
USER 10001:10001
EXPOSE 9095
# No HEALTHCHECK: Kubernetes probes /healthz and /readyz. The config is mounted by the chart.
ENTRYPOINT ["remediator"]
CMD ["serve", "--config", "/etc/remediator/config.yaml"]
