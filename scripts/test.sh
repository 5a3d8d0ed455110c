#!/usr/bin/env bash
# Install what the test suite needs on a fresh Debian machine (apt + a venv), then run it.
# Extra arguments go to pytest, e.g. scripts/test.sh tests/service -k batcher
set -euo pipefail
cd "$(dirname "$0")/.."

apt_install() {
  local sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@"
}
# From Debian: Fashion-MNIST's IDX files (training tests), wrk and h2load (the benchmark harness's test),
# chromium (the browser tests drive it through Playwright; no browser download) and kubectl
# (the Kubernetes tests render the kustomize overlays with `kubectl kustomize`).
missing=()
[ -f /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz ] || missing+=(dataset-fashion-mnist)
command -v wrk >/dev/null || missing+=(wrk)
command -v h2load >/dev/null || missing+=(nghttp2-client)
[ -x /usr/bin/chromium ] || missing+=(chromium)
command -v kubectl >/dev/null || missing+=(kubernetes-client)
[ ${#missing[@]} -eq 0 ] || apt_install "${missing[@]}"

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q -e '.[train,dev,bench,deploy,score]' -e ./clients/python
# Lint and format first: a violation fails the run before any test.
.venv/bin/ruff check .
.venv/bin/ruff format --check .
status=0
.venv/bin/python -m pytest "$@" || status=$?
# pytest's 5 is "no tests collected": a marker expression that selects nothing is not a failure.
[ "$status" -eq 5 ] && exit 0
exit "$status"
