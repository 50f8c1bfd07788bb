"""Errors the model library raises; each message says what was wrong and what is allowed."""

from __future__ import annotations


class ABNError(Exception):
    """Base of every error raised on purpose by ``abn``."""


class UnknownBitWidthError(ABNError, ValueError):
    """A width outside the layer's candidate set was asked for."""

    def __init__(self, bits: object, allowed: tuple[int, ...], where: str = "") -> None:
        place = f" for {where}" if where else ""
        super().__init__(
            f"bit-width {bits!r}{place} is not a candidate; allowed widths: "
            f"{', '.join(str(b) for b in allowed)}"
        )
        self.bits = bits
        self.allowed = allowed


class ConfigLengthError(ABNError, ValueError):
    """A per-layer configuration had the wrong number of widths."""

    def __init__(self, got: int, expected: int) -> None:
        super().__init__(
            f"configuration has {got} widths but the network has {expected} switchable layers; "
            f"give one width for all layers or exactly {expected} comma-separated widths"
        )
        self.got = got
        self.expected = expected


class BudgetError(ABNError, ValueError):
    """A BitOps budget that no configuration can meet, or that is not a number."""

    def __init__(self, message: str, min_bitops: float, max_bitops: float) -> None:
        super().__init__(
            f"{message}; feasible budgets are {min_bitops:.6g} to {max_bitops:.6g} BitOps "
            f"per image (any budget above the maximum runs the dearest configuration)"
        )
        self.min_bitops = min_bitops
        self.max_bitops = max_bitops


class ModelIntegrityError(ABNError):
    """A model directory file is missing, truncated or altered."""


class DatasetNotFoundError(ABNError, FileNotFoundError):
    """A dataset directory or one of its files is absent."""


class UncalibratedBatchNormError(ABNError, RuntimeError):
    """A transitional BatchNorm pair was asked for whose statistics were never estimated."""

    def __init__(self, layer: str, pairs: list[tuple[int, int]]) -> None:
        shown = ", ".join(f"{i}->{b}" for i, b in pairs[:8])
        more = f" and {len(pairs) - 8} more" if len(pairs) > 8 else ""
        super().__init__(
            f"{layer}: BatchNorm statistics of the (input width -> width) pairs {shown}{more} "
            f"were never estimated; calibrate the supernet (abn.calibrate) before running it "
            f"in eval mode"
        )
        self.layer = layer
        self.pairs = pairs


class ConfigError(ABNError, ValueError):
    """A training or evaluation option, or a combination of them, that cannot work."""


class DataSourceError(ABNError, ValueError):
    """Data that does not fit the model or the architecture (classes, channels, size), or an
    image folder that cannot be split as asked."""


class CheckpointMismatchError(ABNError, ValueError):
    """``--resume`` found a checkpoint written for another network."""
