# genrec image for the docker-compose stack (topics job, producer, trainer, serve).
# BASE_IMAGE: any Debian-like image with Python 3.11+ and pip on PATH (scripts/stack-test.sh
# builds a local stand-in where no image registry is reachable).
# TORCH_INDEX: CPU torch wheels keep the image small; build a CUDA image (or one from PyPI
# alone, where the PyTorch index is unreachable) with --build-arg TORCH_INDEX=.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
WORKDIR /app
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# The dependencies first, in a layer of their own: a source change does not reinstall torch.
COPY pyproject.toml ./
RUN python -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies'], sep='\n')" > /tmp/requirements.txt \
 && pip install ${TORCH_INDEX:+--extra-index-url "$TORCH_INDEX"} -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt
COPY README.md ./
COPY model ./model
COPY kernels ./kernels
COPY pipeline ./pipeline
COPY connectors ./connectors
RUN pip install --no-deps . && genrec --help > /dev/null
WORKDIR /data
ENTRYPOINT []
CMD ["genrec", "--help"]
