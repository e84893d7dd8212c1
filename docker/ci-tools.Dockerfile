# The CI image a team's pipeline runs its cdl jobs in (.gitlab-ci.yml: CDL_CI_IMAGE): the cdl
# command (distribution cdl-mlops, built from this checkout, never fetched by name from a public
# index) with kubectl and helm checked against their pinned sha256 sums.
#   docker build -f docker/ci-tools.Dockerfile -t <registry>/cdl/ci-tools:0.1.0 .
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
RUN apt-get update && apt-get install -y --no-install-recommends npm git ca-certificates \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/cdl
COPY pyproject.toml README.md ./
COPY operator ./operator
COPY pipelines ./pipelines
COPY crds ./crds
COPY scripts/install-tools.sh ./scripts/install-tools.sh
RUN bash scripts/install-tools.sh /usr/local \
 && pip install ".[operator]" \
 && cdl version && kubectl version --client && helm version --short
