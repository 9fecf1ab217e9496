"""Training: the Ray Train pretrain job, its per-worker loop, optimizer and checkpoints."""
