# Evidence Triage API: multi-stage build, runtime without torch, non-root, shipped model inside.
#   docker build -t evidence-triage .
#   docker run -d --name triage -p 8000:8000 -v triage-data:/data evidence-triage
#   docker exec triage triage demo        # optional: demo claims, prints keys
#   docker exec triage triage keys create --role admin
# Where Docker Hub is out of reach, any Debian/Ubuntu image with Python 3.11, venv and a
# `python` command will do as the base: docker build --build-arg PYTHON_IMAGE=<image> .

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
# pyproject.toml lists its packages, training/ among them (never imported at run time, and its
# torch is in the [train] extra only), and installs the shipped model as service/shipped_models/,
# the default model folder.
COPY service ./service
COPY training ./training
COPY models/evidence-lite0-1.3.1 ./models/evidence-lite0-1.3.1
# Only the runtime dependencies: no [train] extra, so no torch. The check fails the build if a
# dependency ever pulls torch in.
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --upgrade pip \
    && /opt/venv/bin/pip install . \
    && /opt/venv/bin/python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('torch') is not None)"

FROM ${PYTHON_IMAGE} AS runtime
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin triage \
    && mkdir /data && chown triage:triage /data
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    TRIAGE_DATA_DIR=/data
USER triage
WORKDIR /app
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status != 200)"]
CMD ["triage", "serve", "--host", "0.0.0.0", "--port", "8000"]
