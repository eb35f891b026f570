#!/usr/bin/env bash
# Baseline (c) of bench/serve: infinity-emb in its own venv (it pins numpy<2 and older transformers).
# torch==2.13.0 first: pip takes the CPU wheel on this machine's disk instead of a multi-GB CUDA build.
set -euo pipefail
venv=${1:-.cache/infinity-venv}
"${PYTHON:-python3.11}" -m venv "$venv"
"$venv/bin/pip" install -q --upgrade pip
"$venv/bin/pip" install -q torch==2.13.0
"$venv/bin/pip" install -q "infinity-emb[server,optimum]==0.0.78"
