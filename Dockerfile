# lens server image. CPU by default; `--build-arg VARIANT=gpu` builds the GPU variant
# (onnxruntime-gpu with its CUDA and cuDNN wheels; run with `--gpus all`).
#   docker build -t lens .
#   docker run -p 50051:50051 -v "$PWD/models:/models" lens
# The model repository is a volume: fill it with `lens import` / `lens export` on a machine
# with the training extra (see README), the image itself carries no torch.
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
    && mkdir /models && chown lens:lens /models
COPY --from=build /opt/lens /opt/lens
ENV PATH=/opt/lens/bin:$PATH LENS_REPO=/models PYTHONUNBUFFERED=1
USER 10001:10001
WORKDIR /home/lens
VOLUME ["/models"]
EXPOSE 50051 8080
HEALTHCHECK --interval=30s --timeout=10s --start-period=120s --retries=3 \
    CMD ["lens", "health", "--server", "127.0.0.1:50051"]
ENTRYPOINT ["lens"]
CMD ["serve", "--host", "0.0.0.0", "--port", "50051", "--repo", "/models"]
