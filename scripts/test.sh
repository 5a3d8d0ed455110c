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
# Fashion-MNIST's IDX files from Debian, for the training tests; wrk for the benchmark harness's test.
[ -f /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz ] || apt_install dataset-fashion-mnist
command -v wrk >/dev/null || apt_install wrk

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q -e '.[train,dev,bench]'
exec .venv/bin/python -m pytest "$@"
