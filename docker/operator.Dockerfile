# The cdl operator image the Helm chart runs (values: image.repository/tag).
#   docker build -f docker/operator.Dockerfile -t <registry>/cdl/operator:0.1.0 .
# It holds the operator and the cluster engines' SDKs (Pachyderm, Determined, Label Studio); no
# training framework: trials run in their own images on Determined, models in the predictor image.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 HOME=/tmp
WORKDIR /opt/cdl
COPY pyproject.toml README.md ./
COPY operator ./operator
COPY pipelines ./pipelines
COPY crds ./crds
RUN pip install ".[operator,cluster]" "determined==0.38.1" \
 && useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin cdl
USER 10001
EXPOSE 8080 8081 9090
ENTRYPOINT ["cdl"]
CMD ["operator", "run", "--config", "/etc/cdl/config.yaml"]
