# The worker image of alexnet_exp: the sweep's three steps (--init-only, --join, --finalize) and the MLflow
# tracking server all run from it (deploy/kubernetes/). PyPI's torch wheels bring their own CUDA libraries:
# on a GPU node with the NVIDIA container runtime, the GPU is used as is.
#   docker build -t alexnet-exp:0.1 .
# A pinned tag, not :latest (which makes Kubernetes pull from Docker Hub): load it into the nodes or push it
# to your registry (README, Kubernetes).
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
# CIFAR-100 is not in the image: a volume at /app/data holds it, filled once by deploy/kubernetes/data-job.yaml.
CMD ["python", "-m", "alexnet_exp.sweep", "--help"]
