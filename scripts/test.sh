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
# From Debian: Fashion-MNIST's IDX files (training tests), wrk (the benchmark harness's test) and
# chromium (the playground's browser tests drive it through Playwright; no browser download).
missing=()
[ -f /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz ] || missing+=(dataset-fashion-mnist)
command -v wrk >/dev/null || missing+=(wrk)
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ ${#missing[@]} -eq 0 ] || apt_install "${missing[@]}"

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q -e '.[train,dev,bench,deploy]'
exec .venv/bin/python -m pytest "$@"
