# One image for the migration job, the HTTP API, CPU workers and Flower. GPU workers: build with
#   docker compose build --build-arg TENSORFLOW="tensorflow[and-cuda]>=2.18,<2.22" worker-gpu
FROM python:3.11-slim
ARG TENSORFLOW="tensorflow-cpu>=2.18,<2.22"
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY bloodcell_core ./bloodcell_core
COPY plugins ./plugins
COPY workers ./workers
COPY api ./api
COPY migrations ./migrations
COPY models ./models
RUN pip install --upgrade pip "setuptools>=78.1.1" && pip install "$TENSORFLOW" && pip install -e . && useradd --create-home bloodcell \
    && mkdir -p /var/lib/bloodcell && chown bloodcell /var/lib/bloodcell
USER bloodcell
