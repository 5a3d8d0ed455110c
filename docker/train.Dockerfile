# The training CLI (torch 2.13.0) for `docker compose --profile train run --rm train fit ...`:
#
#   docker build -f docker/train.Dockerfile -t vae-serve:train .
#
# pip's index is its configured default; --build-arg PIP_INDEX_URL=... (or PIP_EXTRA_INDEX_URL)
# picks another, e.g. one that serves torch's CPU builds. CA certificates: docker/certs/*.crt.

ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
COPY docker/certs/ /usr/local/share/ca-certificates/extra/
COPY docker/base.sh /tmp/base.sh
RUN sh /tmp/base.sh && rm /tmp/base.sh
# Fashion-MNIST's IDX files from Debian (your own images: mount them and pass --data).
RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends dataset-fashion-mnist \
    && rm -rf /var/lib/apt/lists/*
ARG PIP_INDEX_URL PIP_EXTRA_INDEX_URL
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service/ service/
COPY training/ training/
RUN python3 -m venv /opt/venv && /opt/venv/bin/pip install ".[train]"
WORKDIR /app
ENV PATH=/opt/venv/bin:$PATH MPLCONFIGDIR=/tmp/matplotlib HOME=/tmp
USER vae
ENTRYPOINT ["python3", "-m", "training"]
CMD ["fit", "fashion-mnist"]
