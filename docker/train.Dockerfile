# A training image for Determined trials of the use cases (spec.model.image):
#   docker build -f docker/train.Dockerfile -t <registry>/cdl/bbc-train:0.1.0 .
# Determined's own base image with the use cases' libraries and cdl's runtime helpers; the model
# code itself is uploaded with the experiment (model_dir).
FROM determinedai/pytorch-ngc:0.38.1
ENV PYTHONDONTWRITEBYTECODE=1 PIP_NO_CACHE_DIR=1 PYTHONPATH=/opt/cdl KERAS_BACKEND=torch
RUN pip install "nltk>=3.8" "keras==3.15.1" "pachyderm-sdk==2.12.2" "scipy>=1.11"
COPY operator/cdl/__init__.py /opt/cdl/cdl/__init__.py
COPY operator/cdl/runtime /opt/cdl/cdl/runtime
