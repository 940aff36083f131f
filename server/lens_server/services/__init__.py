"""gRPC servicers: proto ↔ domain translation, nothing else."""
