# lens server image. CPU by default; `--build-arg VARIANT=gpu` builds the GPU variant
# (onnxruntime-gpu with its CUDA and cuDNN wheels; run with `--gpus all`).
#   docker build -t lens .
#   docker run -p 50051:50051 -p 8080:8080 -v "$PWD/models:/models" \
#     -v "$PWD/keys.txt:/etc/lens/keys/keys:ro" lens
# It serves with deploy/lens.toml (copied to /etc/lens/lens.toml): gRPC on 50051, HTTP and
# /metrics on 8080, API keys from /etc/lens/keys/keys, JSON request logs. The model repository
# and the collections are volumes: fill the repository with `lens import` / `lens export` on
# a machine with the training extra (see README), the image itself carries no torch.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG VARIANT=cpu
ARG GRPCIO_TOOLS_VERSION=1.76.0
ARG ORT_GPU_VERSION=1.23.2
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/lens \
    && /opt/lens/bin/pip install "grpcio-tools==${GRPCIO_TOOLS_VERSION}"
COPY pyproject.toml README.md ./
COPY protos ./protos
RUN /opt/lens/bin/python protos/generate.py
COPY server ./server
COPY clients ./clients
COPY training ./training
RUN /opt/lens/bin/pip install ".[index]" \
    && if [ "$VARIANT" = "gpu" ]; then \
         /opt/lens/bin/pip uninstall -y onnxruntime \
         && /opt/lens/bin/pip install "onnxruntime-gpu[cuda,cudnn]==${ORT_GPU_VERSION}"; \
       fi \
    && /opt/lens/bin/pip uninstall -y grpcio-tools

FROM ${PYTHON_IMAGE} AS runtime
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin lens \
    && mkdir -p /models /data/collections /etc/lens/keys \
    && chown lens:lens /models /data/collections
COPY --from=build /opt/lens /opt/lens
ENV PATH=/opt/lens/bin:$PATH LENS_REPO=/models PYTHONUNBUFFERED=1
USER 10001:10001
WORKDIR /home/lens
COPY deploy/lens.toml /etc/lens/lens.toml
VOLUME ["/models"]
VOLUME ["/data/collections"]
# gRPC, then HTTP (with /metrics).
EXPOSE 50051 8080
HEALTHCHECK --interval=30s --timeout=10s --start-period=120s --retries=3 \
    CMD ["lens", "health", "--server", "127.0.0.1:50051"]
ENTRYPOINT ["lens"]
CMD ["serve", "--config", "/etc/lens/lens.toml"]
