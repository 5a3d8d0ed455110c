#!/usr/bin/env bash
# One command for the whole benchmark: installs wrk and h2load (Debian), the bench extra and MLServer's
# environment, then runs every scenario against vae-serve and its peers. Arguments go to `python -m benchmarks`
# (e.g. --duration 2 --concurrency 1 64). Results: benchmarks/results/.
set -euo pipefail
cd "$(dirname "$0")/.."
# wrk (HTTP/1.1) and h2load (nghttp2-client: HTTP/2 and gRPC), compiled load generators, from Debian
missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v h2load >/dev/null || missing+=(nghttp2-client)
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q -e '.[bench]'
# MLServer, a peer, in an environment of its own (its FastAPI pin clashes with the service's)
[ -x .venv-mlserver/bin/python ] || python3 -m venv .venv-mlserver
.venv-mlserver/bin/python -m pip install -q -r benchmarks/peers/mlserver/requirements.txt
exec .venv/bin/python -m benchmarks "$@"
