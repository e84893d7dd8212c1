# The Open Inference Protocol (V2) model-serving image a SeldonDeployment runs for Deployments with
# `server: mlserver` (seldon.mlserverImage): MLServer with cdl's custom runtime
# (cdl.runtime.mlserver_runtime.CdlRuntime), which downloads the ModelVersion package named in
# MLSERVER_MODEL_URI and loads the use case's predictor class from it.
#   docker build -f docker/mlserver.Dockerfile -t <registry>/cdl/mlserver:0.1.0 .
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 HOME=/tmp KERAS_BACKEND=torch \
    MLSERVER_PARALLEL_WORKERS=0 MLSERVER_HTTP_PORT=9000 MLSERVER_GRPC_PORT=9500 \
    MLSERVER_MODEL_IMPLEMENTATION=cdl.runtime.mlserver_runtime.CdlRuntime
WORKDIR /mlserver
# The same install list as the local serving engine's mlserver venv (wheels only).
COPY operator/cdl/engines/serving/local/requirements-mlserver.txt /tmp/requirements.txt
RUN pip install --only-binary :all: --extra-index-url https://download.pytorch.org/whl/cpu -r /tmp/requirements.txt \
 && useradd --uid 8888 --no-create-home --shell /usr/sbin/nologin mlserver
# Only the runtime side of cdl: it imports nothing from the operator.
COPY operator/cdl/runtime /mlserver/cdl/runtime
RUN touch /mlserver/cdl/__init__.py
ENV PYTHONPATH=/mlserver
USER 8888
EXPOSE 9000 9500 8082
CMD ["mlserver", "start", "/mlserver"]
