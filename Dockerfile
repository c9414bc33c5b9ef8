# The rtml image: every rtml service, and the MLflow server of infra/docker-compose.yml.
# Build: docker build -t rtml:latest .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    RTML_STATE_DIR=/data \
    RTML_FEATURE_REPO=/app/feature_repo

WORKDIR /app
RUN pip install --no-cache-dir "uv==0.13.9"
# pinned dependencies first, so code changes reuse this layer
COPY infra/requirements-production.lock infra/requirements-production.lock
RUN uv pip install --system --no-cache -r infra/requirements-production.lock
COPY pyproject.toml README.md ./
COPY rtml rtml
COPY pipelines pipelines
COPY serving serving
COPY feature_repo feature_repo
COPY infra/feast infra/feast
RUN uv pip install --system --no-cache --no-deps . \
    && useradd --create-home --uid 10001 rtml \
    && mkdir -p /data && chown rtml /data
USER rtml
VOLUME ["/data"]
EXPOSE 8000 8001
ENTRYPOINT ["rtml"]
CMD ["--help"]
