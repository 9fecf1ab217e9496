"""The checkpoint format: what a checkpoint directory holds, how it is written, found, checked and copied.

It sits just above the config layer: a checkpoint records the resolved run config and the model
shape, and a resume is checked against them.
"""
