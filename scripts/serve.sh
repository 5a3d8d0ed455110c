#!/usr/bin/env bash
# Install the service (no torch) into a venv and serve the shipped models on 127.0.0.1:8000.
# Settings come from VAE_* variables, e.g. VAE_HOST=0.0.0.0 VAE_PORT=8080 scripts/serve.sh
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q -e .
exec .venv/bin/vae-serve "$@"
