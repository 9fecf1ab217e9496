"""The base layer: typed errors, paths and storage, torch.distributed helpers, process set-up.

Everything else in gptray may import it; it imports nothing of gptray's above it.
"""
