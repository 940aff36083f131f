"""The lens server: model repository, preprocessing, ONNX runtimes, dynamic batching, gRPC.

Nothing in this package imports the training package. torch is optional, and the CPU serving
path (ONNX Runtime towers, Pillow preprocessing, CPU FAISS collections) never imports it; a
test checks. It is loaded only on a GPU path, by these modules:

- `lens_server.gpu`: `cuda_available()` imports torch where an NVIDIA driver is present (and
  only then), to ask it for a CUDA device.
- `lens_server.runtime.program` (imports torch at module level): fp16 `torch.export` programs,
  imported by `lens_server.runtime.choose` when a version has a program and a GPU is present,
  or `--runtime program` is asked for.
- `lens_server.preprocess.device` (imports torch and torchvision at module level): nvJPEG
  decoding and device preprocessing, imported by `lens_server.pipeline.image_pipeline` when
  images are decoded on the device (`--image-decode device`, or `auto` beside a CUDA tower).
- `lens_server.pipeline.DeviceImages.run` and `OnnxTower.run_device` import torch when they
  run, on that device path only.
- `lens_server.collections.gpu_search`: a flat collection index searched on a CUDA GPU
  through torch (where faiss has no GPU build) imports it when the index is built or loaded.
"""
