"""`textrnn-train`: the training command line under its installed name; says which extra to
install when the training packages are missing (a serve-only install)."""

from __future__ import annotations

import sys

__all__ = ["main"]


def main() -> int:
    """Run `python -m training` as `textrnn-train`."""
    try:
        from training.cli import main as train_main
    except ModuleNotFoundError as e:
        if e.name not in ("tqdm", "matplotlib"):
            raise
        print(f"error: textrnn-train needs the training extras ({e.name} is missing): "
              "pip install 'textrnn[train]'", file=sys.stderr)
        return 2
    return train_main(prog="textrnn-train")
