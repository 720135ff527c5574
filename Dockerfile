# syntax=docker/dockerfile:1
# CPU image by default; `--build-arg TORCH=cu128` builds a CUDA one (run it with a GPU).
# The install steps are those of `make setup`: scripts/install-torch.sh, then the package.
ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim AS build
ARG TORCH=cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/venv
COPY scripts/install-torch.sh scripts/install-torch.sh
RUN scripts/install-torch.sh /opt/venv/bin/python "${TORCH}"
COPY pyproject.toml README.md ./
COPY textrnn textrnn
COPY app app
RUN /opt/venv/bin/python -m pip install . \
 && /opt/venv/bin/python -m pip uninstall --yes pip setuptools

FROM python:${PYTHON_VERSION}-slim
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    RNN_MODELS_DIR=/srv/models
RUN useradd --create-home --uid 10001 --user-group textrnn
COPY --from=build /opt/venv /opt/venv
COPY --chown=10001:10001 models /srv/models
USER 10001
WORKDIR /home/textrnn
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/health/ready', timeout=2).status != 200)"]
CMD ["uvicorn", "app.main:app", "--host", "0.0.0.0", "--port", "8000", "--timeout-graceful-shutdown", "30", "--http", "app.connections:Protocol"]
