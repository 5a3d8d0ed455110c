#!/bin/sh
# What every vae-serve image does first: trust the CA certificates put in docker/certs/ (a
# TLS-inspecting proxy's), and create the non-root user the images run as (uid/gid 10001).
set -eu
if ls /usr/local/share/ca-certificates/extra/*.crt >/dev/null 2>&1; then update-ca-certificates; fi
(getent group vae || groupadd --system --gid 10001 vae) >/dev/null
(getent passwd vae || useradd --system --uid 10001 --gid vae --home-dir /app --shell /usr/sbin/nologin vae) >/dev/null
