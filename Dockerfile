# The specdecode-operator image: `docker build -t REGISTRY/specdecode-operator:TAG .`
# (docs/helm.md). The chart runs it as `python -m specdecode_operator` with its flags.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
# Only what `pip install .` needs (see .dockerignore): the operator distribution. The runtime
# (runtime/, specdecode-runtime: local plane, stand-in vLLM, demo) is not in the image;
# tests/unit/test_packaging.py builds a wheel from exactly these COPY lines.
COPY pyproject.toml README.md ./
COPY operator/ operator/
RUN pip install . \
    && rm -rf /src \
    && groupadd --system --gid 10001 specdecode \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin specdecode

WORKDIR /
# Numeric, so that the pod's runAsNonRoot can verify it.
USER 10001:10001
# 8080: Kopf's liveness endpoint (--liveness); 8081: the operator's /metrics (--metrics-port).
EXPOSE 8080 8081
ENTRYPOINT ["python", "-m", "specdecode_operator"]
