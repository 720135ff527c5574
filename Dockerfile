# CPU image by default; `--build-arg TORCH=cu128` builds a CUDA one (run it with a GPU).
# It needs BuildKit: Docker's default builder since 23.0 (DOCKER_BUILDKIT=1 before that).
# The install steps are those of `make setup`: scripts/install-torch.sh, then the package.
# Models are mounted at /srv/models; `--target with-models` bakes models/ in instead.
# Behind a company's mirrors and proxies (docs/deployment.md): BASE_IMAGE, PIP_INDEX_URL,
# PIP_EXTRA_INDEX_URL, PIP_FIND_LINKS, PIP_TRUSTED_HOST, TORCH_INDEX_URL, Docker's own
# HTTP(S)_PROXY arguments, and a CA bundle as the build secret `ca_bundle`.
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
ARG TORCH=cpu
# pip reads these from the environment; left unset, pip's defaults stand.
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_FIND_LINKS
ARG PIP_TRUSTED_HOST
# The index torch itself comes from (scripts/install-torch.sh); empty: pip's indexes only.
ARG TORCH_INDEX_URL
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python3 -m venv /opt/venv
COPY scripts/install-torch.sh scripts/install-torch.sh
# The CA bundle is pip's for the steps that download, and never lands in a layer.
RUN --mount=type=secret,id=ca_bundle \
    if [ -s /run/secrets/ca_bundle ]; then export PIP_CERT=/run/secrets/ca_bundle; fi \
 && scripts/install-torch.sh /opt/venv/bin/python "${TORCH}"
# The dependencies (and the build backend) before the code, so that a change to the code
# reinstalls only the package itself.
COPY pyproject.toml ./
RUN --mount=type=secret,id=ca_bundle \
    if [ -s /run/secrets/ca_bundle ]; then export PIP_CERT=/run/secrets/ca_bundle; fi \
 && /opt/venv/bin/python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb')); \
print('\n'.join(p['project']['dependencies'] + p['build-system']['requires']))" > requirements.txt \
 && /opt/venv/bin/python -m pip install --requirement requirements.txt
COPY README.md ./
COPY textrnn textrnn
COPY app app
# torch's C++ headers and test programs (145 MB) serve no one who only runs models.
RUN /opt/venv/bin/python -m pip install --no-deps --no-build-isolation . \
 && /opt/venv/bin/python -m pip uninstall --yes pip setuptools \
 && rm -rf /opt/venv/lib/python3*/site-packages/torch/include \
           /opt/venv/lib/python3*/site-packages/torch/test

FROM ${BASE_IMAGE} AS service
# tini is PID 1: it hands signals to the server and reaps orphaned processes, which a server
# running as PID 1 would leave as zombies.
# hadolint ignore=DL3008
RUN --mount=type=secret,id=ca_bundle \
    if [ -s /run/secrets/ca_bundle ]; then set -- -o Acquire::https::CAInfo=/run/secrets/ca_bundle; fi \
 && apt-get "$@" update \
 && apt-get "$@" install --yes --no-install-recommends tini \
 && apt-get clean && rm -rf /var/lib/apt/lists/* \
 && useradd --create-home --uid 10001 --user-group textrnn \
 && mkdir /srv/models
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    RNN_MODELS_DIR=/srv/models
COPY --from=build /opt/venv /opt/venv
USER 10001
WORKDIR /home/textrnn
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/health/ready', timeout=2).status != 200)"]
ENTRYPOINT ["tini", "--"]
CMD ["uvicorn", "app.main:app", "--host", "0.0.0.0", "--port", "8000", "--timeout-graceful-shutdown", "30", "--http", "app.connections:Protocol"]

# `docker build --target with-models`: the shipped models in the image, for a rollout where
# each model change is a new image (the Kubernetes base).
FROM service AS with-models
COPY --chown=10001:10001 models /srv/models

# The default target: the models come from a volume (compose mounts ./models).
FROM service
