"""Training: stage 1 (the supernet) and stage 2 (the per-image width policy)."""
