# The worker image of alexnet_exp: the sweep's three steps (--init-only, --join, --finalize) and the MLflow
# tracking server all run from it (deploy/kubernetes/). PyPI's torch wheels bring their own CUDA libraries:
# on a GPU node with the NVIDIA container runtime, the GPU is used as is.
#   docker build -t alexnet-exp:latest .
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT=true
RUN apt-get update && apt-get install -y --no-install-recommends git && rm -rf /var/lib/apt/lists/*
WORKDIR /app
# Dependencies first, so that a code change does not reinstall torch.
COPY pyproject.toml README.md ./
COPY alexnet_exp/__init__.py alexnet_exp/__init__.py
RUN pip install torch==2.14.1 torchvision==0.29.1 -e .
COPY alexnet_exp alexnet_exp
COPY search_spaces search_spaces
# CIFAR is not downloaded at run time on clusters without internet: mount it at /app/data (see the manifests).
CMD ["python", "-m", "alexnet_exp.sweep", "--help"]
