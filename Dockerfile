# genrec image for the docker-compose stack (trainer, producer, topic job).
# CPU torch wheels keep the image small; build a CUDA image by dropping the index URL.
FROM python:3.11-slim
WORKDIR /app
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
COPY pyproject.toml README.md ./
COPY model ./model
COPY kernels ./kernels
COPY pipeline ./pipeline
COPY connectors ./connectors
RUN pip install --extra-index-url https://download.pytorch.org/whl/cpu .
WORKDIR /data
ENTRYPOINT []
CMD ["genrec", "--help"]
