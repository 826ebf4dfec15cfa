# One Dockerfile, two images: `app` (web app, no ML stack, small) and `worker` (the training
# worker: torch with its bundled CUDA runtime; the NVIDIA driver comes from the host).
FROM python:3.11-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN useradd --create-home --uid 1000 tunelab && mkdir -p /data /models && chown tunelab /data /models
WORKDIR /srv/tunelab
COPY pyproject.toml README.md alembic.ini ./
COPY app app
COPY worker worker
COPY migrations migrations
COPY templates templates

FROM base AS app
RUN pip install -e .
USER tunelab
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s \
  CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"
CMD ["uvicorn", "app.main:app", "--host", "0.0.0.0", "--port", "8000", "--proxy-headers", "--forwarded-allow-ips", "*"]

FROM base AS worker
ARG TORCH_VERSION=2.13.0
RUN pip install "torch==${TORCH_VERSION}" && pip install -e '.[worker]'
USER tunelab
ENV HF_HOME=/models/.hf-cache
CMD ["tunelab", "worker", "--gpus", "auto"]
