"""The lens server: model repository, preprocessing, ONNX runtimes, dynamic batching, gRPC.

Nothing in this package imports torch or the training package.
"""
