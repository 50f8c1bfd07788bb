"""Paired comparisons of two classifiers on the same images, with bootstrap intervals.

Two methods scored on the same test images are compared through the per-image difference of
their correctness, so the image-to-image variation both share cancels: a paired interval is
several times narrower than two independent ones. The interval is the percentile bootstrap
over images (resampled with replacement), with a fixed seed so a report is reproducible.
A difference whose interval contains 0 is a tie.
"""

from __future__ import annotations

import torch

BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0


def paired_difference(
    correct_a: torch.Tensor,
    correct_b: torch.Tensor,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    level: float = 0.95,
) -> dict[str, float]:
    """Accuracy of ``a`` minus accuracy of ``b`` with its paired bootstrap interval.

    ``correct_a`` and ``correct_b`` are boolean (or 0/1) tensors, one entry per image, in the
    same image order. Returns ``{"difference", "low", "high"}`` as fractions (0.01 = 1 pt).
    """
    if correct_a.shape != correct_b.shape or correct_a.dim() != 1 or len(correct_a) == 0:
        raise ValueError(
            f"paired comparison needs two non-empty 1-D tensors of the same images, got shapes "
            f"{tuple(correct_a.shape)} and {tuple(correct_b.shape)}"
        )
    diff = correct_a.double() - correct_b.double()
    n = diff.shape[0]
    generator = torch.Generator().manual_seed(seed)
    means = torch.empty(resamples, dtype=torch.float64)
    chunk = max(1, 2_000_000 // n)  # bound the index tensor's memory
    for start in range(0, resamples, chunk):
        count = min(chunk, resamples - start)
        index = torch.randint(0, n, (count, n), generator=generator)
        means[start : start + count] = diff[index].mean(dim=1)
    tail = (1.0 - level) / 2
    low, high = torch.quantile(means, torch.tensor([tail, 1.0 - tail], dtype=torch.float64))
    return {"difference": float(diff.mean()), "low": float(low), "high": float(high)}
