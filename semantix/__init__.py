"""semantix: a benchmark harness for training-free diffusion-based semantic style transfer."""

__version__ = "0.1.0"
