# The model-serving image a SeldonDeployment runs (seldon.predictorImage): seldon-core's Python
# wrapper around cdl's generic predictor, which downloads the ModelVersion package named in its
# parameters and loads the use case's predictor class from it.
#   docker build -f docker/predictor.Dockerfile -t <registry>/cdl/predictor:0.1.0 .
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 HOME=/tmp KERAS_BACKEND=torch
WORKDIR /microservice
# The same install list as the local serving engine's venv (seldon-core pins old libraries).
COPY operator/cdl/engines/serving/local/requirements.txt /tmp/requirements.txt
RUN pip install --extra-index-url https://download.pytorch.org/whl/cpu -r /tmp/requirements.txt \
 && useradd --uid 8888 --no-create-home --shell /usr/sbin/nologin seldon
# Only the runtime side of cdl: it imports nothing from the operator.
COPY operator/cdl/runtime /microservice/cdl/runtime
RUN touch /microservice/cdl/__init__.py \
 && printf 'from cdl.runtime.serving import CdlPredictor  # noqa: F401\n' > /microservice/CdlPredictor.py
USER 8888
EXPOSE 9000 5001 6000
ENV MODEL_NAME=CdlPredictor SERVICE_TYPE=MODEL
CMD ["sh", "-c", "exec seldon-core-microservice $MODEL_NAME --service-type $SERVICE_TYPE --workers 2 --threads 1 --grpc-workers 0"]
