"""Shared core of textrnn: nets, tokenizers, the model folder format and sampling.

This package imports neither `app` nor `training`; both build on it.
"""

__version__ = "0.1.0"
