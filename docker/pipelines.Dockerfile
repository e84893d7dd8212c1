# The image of the reusable data-pipeline steps (pipelines/), for Pachyderm pipelines:
#   docker build -f docker/pipelines.Dockerfile -t <registry>/cdl/pipelines:0.1.0 .
# A step runs as e.g. `python -m pipelines.text.validate --min-chars 100` under /pfs.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PYTHONPATH=/opt/cdl
WORKDIR /opt/cdl
RUN pip install "numpy<3" "pillow>=10"
COPY operator/cdl/__init__.py /opt/cdl/cdl/__init__.py
COPY operator/cdl/runtime /opt/cdl/cdl/runtime
# the split step's rules (numpy, cdl.errors and cdl.runtime.idx only)
COPY operator/cdl/errors.py /opt/cdl/cdl/errors.py
COPY operator/cdl/engines/__init__.py /opt/cdl/cdl/engines/__init__.py
COPY operator/cdl/engines/data/__init__.py /opt/cdl/cdl/engines/data/__init__.py
COPY operator/cdl/engines/data/split.py /opt/cdl/cdl/engines/data/split.py
COPY pipelines /opt/cdl/pipelines
