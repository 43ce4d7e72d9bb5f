"""Executors run a stage's per-sample function over batches; they know nothing about what it does."""

from curate.executors.local import map_batches

__all__ = ["map_batches"]
