# One image for the migration job, the HTTP API, CPU workers and Flower. GPU workers: build with
#   docker compose build --build-arg TENSORFLOW="tensorflow[and-cuda]>=2.18,<2.22" worker-gpu
# Every top-level package the entry points import is copied below (tests/unit/test_architecture.py checks it).
FROM python:3.11-slim
ARG TENSORFLOW="tensorflow-cpu>=2.18,<2.22"
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
# The dependencies first, read from pyproject.toml alone: a change to the code or the docs rebuilds only the layers after them.
COPY pyproject.toml ./
RUN pip install --upgrade pip "setuptools>=78.1.1" && pip install "$TENSORFLOW" \
    && python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        >/tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt && rm /tmp/requirements.txt
COPY README.md ./
COPY bloodcell_core ./bloodcell_core
COPY plugins ./plugins
COPY workers ./workers
COPY api ./api
COPY web ./web
COPY migrations ./migrations
COPY models ./models
RUN pip install --no-deps -e . && useradd --create-home bloodcell \
    && mkdir -p /var/lib/bloodcell && chown bloodcell /var/lib/bloodcell
USER bloodcell
