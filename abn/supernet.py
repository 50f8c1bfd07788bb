"""Quantizable ResNet supernets built from a spec, run at a fixed configuration or layer by layer.

Every conv except the stem is a *switchable layer*: it can run at any width of the candidate
set. A *configuration* gives one width per switchable layer (or one width for all of them).

Layer-by-layer execution is the hook point of the policy and the batching engine::

    run = net.start(x)
    while not run.done:
        widths = choose(run.layer_index, run.activation)   # int, or one width per sample
        run.advance(widths)
    logits = run.logits
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable, Generator, Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from abn.errors import ConfigError, ConfigLengthError, UnknownBitWidthError
from abn.layers import (
    FixedConvBN,
    FixedLinear,
    HostWidths,
    SwitchableConvBN,
    Widths,
    add_fresh,
    relu_fresh,
    run_grouped,
)

DEFAULT_BIT_CANDIDATES = (1, 2, 3, 4, 8)  # chosen on validation: docs/results.md

Config = int | Sequence[int] | torch.Tensor


@dataclass(frozen=True)
class StageSpec:
    channels: int
    blocks: int
    stride: int


@dataclass(frozen=True)
class ResNetSpec:
    """Everything needed to rebuild a supernet; stored in the model manifest."""

    name: str
    in_channels: int
    input_size: int
    num_classes: int
    stem_channels: int
    stem_kernel: int
    stem_stride: int
    stem_pool: bool
    stages: tuple[StageSpec, ...]
    bit_candidates: tuple[int, ...] = DEFAULT_BIT_CANDIDATES
    # "transitional": one BN per (input width, own width) pair; "per_width": one per own width
    # (the 1.x models); "shared": one for every width. See abn.layers.TransitionalBatchNorm2d.
    batch_norm: str = "transitional"
    switchable_clipping: bool = True
    fixed_bits: int = 8

    def to_dict(self) -> dict:
        d = asdict(self)
        d["stages"] = [asdict(s) for s in self.stages]
        d["bit_candidates"] = list(self.bit_candidates)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ResNetSpec:
        d = dict(d)
        d.pop("family", None)  # written by 1.x manifests; every architecture is a ResNet
        if "bit_specific_bn" in d:  # 1.x manifests: a boolean, before transitional BN
            d["batch_norm"] = "per_width" if d.pop("bit_specific_bn") else "shared"
        d["stages"] = tuple(StageSpec(**s) for s in d["stages"])
        d["bit_candidates"] = tuple(d["bit_candidates"])
        return cls(**d)

    def replace(self, **changes: object) -> ResNetSpec:
        d = self.to_dict()
        d.update(changes)
        return ResNetSpec.from_dict(d)


ARCHITECTURES: dict[str, ResNetSpec] = {
    # Fashion-MNIST (28x28 grayscale): three stages of one basic block, ~9 M MACs.
    "resnet8_fmnist": ResNetSpec(
        name="resnet8_fmnist",
        in_channels=1,
        input_size=28,
        num_classes=10,
        stem_channels=16,
        stem_kernel=3,
        stem_stride=1,
        stem_pool=False,
        stages=(StageSpec(16, 1, 1), StageSpec(32, 1, 2), StageSpec(64, 1, 2)),
    ),
    # CIFAR-style ResNet-20 (32x32 RGB), 1x1-conv shortcuts where the shape changes.
    "resnet20_cifar": ResNetSpec(
        name="resnet20_cifar",
        in_channels=3,
        input_size=32,
        num_classes=10,
        stem_channels=16,
        stem_kernel=3,
        stem_stride=1,
        stem_pool=False,
        stages=(StageSpec(16, 3, 1), StageSpec(32, 3, 2), StageSpec(64, 3, 2)),
    ),
    # ResNet-18 (224x224 RGB), ImageNet layout.
    "resnet18_imagenet": ResNetSpec(
        name="resnet18_imagenet",
        in_channels=3,
        input_size=224,
        num_classes=1000,
        stem_channels=64,
        stem_kernel=7,
        stem_stride=2,
        stem_pool=True,
        stages=(
            StageSpec(64, 2, 1),
            StageSpec(128, 2, 2),
            StageSpec(256, 2, 2),
            StageSpec(512, 2, 2),
        ),
    ),
}


def architecture(name: str, **overrides: object) -> ResNetSpec:
    """The named architecture, with fields such as ``num_classes`` overridden."""
    if name not in ARCHITECTURES:
        raise ConfigError(f"unknown architecture {name!r}; known: {', '.join(ARCHITECTURES)}")
    spec = ARCHITECTURES[name]
    return spec.replace(**overrides) if overrides else spec


class BasicBlock(nn.Module):
    """ResNet basic block; its switchable layers run in the order conv1, conv2, shortcut.

    Which width feeds which BN pair: conv1 and the shortcut read the block's input, so their
    input width is the width of the layer that produced it (the previous block's conv2, or the
    stem's fixed width for the first block); conv2 reads conv1's output. The block's output
    (``relu(conv2 + shortcut)``) counts as produced at conv2's width: the residual sum is
    dominated by the main path, and the identity shortcut carries no width of its own.
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        stride: int,
        spec: ResNetSpec,
        prefix: str,
        input_widths: tuple[int, ...],
    ) -> None:
        super().__init__()
        bits = spec.bit_candidates
        opts = {"bn_mode": spec.batch_norm, "switchable_clipping": spec.switchable_clipping}
        self.conv1 = SwitchableConvBN(
            in_ch, out_ch, 3, stride, bits, f"{prefix}.conv1", input_widths=input_widths, **opts
        )
        self.conv2 = SwitchableConvBN(out_ch, out_ch, 3, 1, bits, f"{prefix}.conv2", **opts)
        self.shortcut = (
            SwitchableConvBN(
                in_ch,
                out_ch,
                1,
                stride,
                bits,
                f"{prefix}.shortcut",
                input_widths=input_widths,
                **opts,
            )
            if stride != 1 or in_ch != out_ch
            else None
        )

    def switchable_layers(self) -> list[SwitchableConvBN]:
        return [m for m in (self.conv1, self.conv2, self.shortcut) if m is not None]

    def steps(
        self, x: torch.Tensor, in_widths: HostWidths
    ) -> Generator[torch.Tensor, HostWidths, tuple[torch.Tensor, HostWidths]]:
        """Yield before each switchable layer, receive its widths (checked, on the host);
        return the block's output and the widths it counts as produced at (conv2's)."""
        widths = yield x
        out = relu_fresh(run_grouped(_checked(self.conv1), x, widths, in_widths))
        conv1_widths = widths
        widths = yield out
        out = run_grouped(_checked(self.conv2), out, widths, conv1_widths)
        out_widths = widths
        if self.shortcut is None:
            return relu_fresh(add_fresh(out, x)), out_widths
        widths = yield x
        shortcut = run_grouped(_checked(self.shortcut), x, widths, in_widths)
        return relu_fresh(add_fresh(out, shortcut)), out_widths


def _checked(layer: SwitchableConvBN) -> Callable[..., torch.Tensor]:
    """``layer`` called by a run, which checked its widths where they entered it."""
    return functools.partial(layer, checked=True)


@dataclass(frozen=True)
class BlockInput:
    """A residual block's input in one pass: the activation and the widths that produced it
    (what its first layers' transitional BN pairs are keyed by)."""

    activation: torch.Tensor
    widths: HostWidths


class LayerwiseRun:
    """One forward pass paused before each switchable layer, so a caller picks its width.

    ``activation`` is the tensor the next switchable layer will consume (before quantization),
    ``layer_index`` its position in :attr:`Supernet.switchable_layers`.
    """

    def __init__(
        self,
        steps: Generator[torch.Tensor, HostWidths, torch.Tensor],
        check: Callable[[int, Widths], HostWidths],
        first_layer: int = 0,
        block_inputs: list[BlockInput] | None = None,
    ) -> None:
        self._steps = steps
        self._check = check
        self.layer_index = first_layer
        self.logits: torch.Tensor | None = None
        # each block's input as this pass saw it, so a later pass can re-run from a boundary
        self.block_inputs: list[BlockInput] = [] if block_inputs is None else block_inputs
        self.activation: torch.Tensor | None = next(steps)

    @property
    def done(self) -> bool:
        return self.logits is not None

    def advance(self, widths: Widths) -> None:
        """Run the next switchable layer at ``widths``: checked here, and read to the host
        once, the only device-to-host copy the layer's widths take."""
        if self.done:
            raise RuntimeError("the forward pass has already finished")
        self._advance_checked(self._check(self.layer_index, widths))

    def _advance_checked(self, widths: HostWidths) -> None:
        try:
            self.activation = self._steps.send(widths)
            self.layer_index += 1
        except StopIteration as finished:
            self.activation = None
            self.logits = finished.value


class Supernet(nn.Module):
    """A ResNet whose switchable layers share one set of full-precision weights across widths."""

    def __init__(self, spec: ResNetSpec) -> None:
        super().__init__()
        self.spec = spec
        self.bit_candidates = tuple(sorted(spec.bit_candidates))
        self.stem = FixedConvBN(
            spec.in_channels,
            spec.stem_channels,
            spec.stem_kernel,
            spec.stem_stride,
            spec.fixed_bits,
        )
        blocks = []
        in_ch = spec.stem_channels
        feeder_widths: tuple[int, ...] = (spec.fixed_bits,)  # the stem feeds the first block
        for s_i, stage in enumerate(spec.stages):
            for b_i in range(stage.blocks):
                stride = stage.stride if b_i == 0 else 1
                name = f"stage{s_i + 1}.block{b_i + 1}"
                blocks.append(BasicBlock(in_ch, stage.channels, stride, spec, name, feeder_widths))
                in_ch = stage.channels
                feeder_widths = self.bit_candidates
        self.blocks = nn.ModuleList(blocks)
        self.classifier = FixedLinear(in_ch, spec.num_classes, spec.fixed_bits)
        self.switchable_layers: list[SwitchableConvBN] = [
            layer for block in self.blocks for layer in block.switchable_layers()
        ]
        starts = [0]
        for block in self.blocks[:-1]:
            starts.append(starts[-1] + len(block.switchable_layers()))
        self._block_first_layers = tuple(starts)  # read by every re-run: counted once

    @property
    def num_switchable(self) -> int:
        return len(self.switchable_layers)

    @property
    def layer_names(self) -> list[str]:
        return [layer.name for layer in self.switchable_layers]

    # -- configurations -------------------------------------------------------------------
    def check_widths(self, index: int, widths: Widths) -> HostWidths:
        """Validate one layer's widths, an int or a 1-D integer tensor of candidates, and
        return them on the host (one copy of a tensor)."""
        allowed = self.bit_candidates
        where = self.switchable_layers[index].name
        if isinstance(widths, torch.Tensor) and widths.dim() > 0:
            if widths.is_floating_point() or widths.is_complex():
                raise UnknownBitWidthError(widths.flatten()[0].item(), allowed, where)
            values = tuple(widths.tolist())
            bad = set(values) - set(allowed)
            if bad:
                raise UnknownBitWidthError(min(bad), allowed, where)
            return values
        if isinstance(widths, torch.Tensor):
            widths = int(widths.item())
        if isinstance(widths, bool):
            raise UnknownBitWidthError(widths, allowed, where)
        try:
            value = operator.index(widths)  # int or numpy integer; floats are refused
        except TypeError:
            raise UnknownBitWidthError(widths, allowed, where) from None
        if value not in allowed:
            raise UnknownBitWidthError(widths, allowed, where)
        return value

    def expand_config(self, config: Config) -> list[HostWidths]:
        """One entry per switchable layer, checked and on the host, from a single width, a
        list, or an ``(N, L)`` tensor."""
        n = self.num_switchable
        if isinstance(config, torch.Tensor) and config.dim() == 2:
            if config.shape[1] != n:
                raise ConfigLengthError(config.shape[1], n)
            return [self.check_widths(i, config[:, i]) for i in range(n)]
        if isinstance(config, int) and not isinstance(config, bool):
            return [self.check_widths(i, config) for i in range(n)]
        config = [int(b) if isinstance(b, torch.Tensor) else b for b in config]
        if len(config) == 1:
            config = config * n
        if len(config) != n:
            raise ConfigLengthError(len(config), n)
        return [self.check_widths(i, b) for i, b in enumerate(config)]

    def uniform(self, bits: int) -> list[int]:
        return [bits] * self.num_switchable

    # -- execution ------------------------------------------------------------------------
    def _steps(
        self, h: torch.Tensor, widths: HostWidths, first_block: int, record: list[BlockInput]
    ) -> Generator[torch.Tensor, HostWidths, torch.Tensor]:
        for block in self.blocks[first_block:]:
            record.append(BlockInput(h, widths))
            h, widths = yield from block.steps(h, widths)
        h = F.adaptive_avg_pool2d(h, 1).flatten(1)
        return self.classifier(h)

    def start(self, x: torch.Tensor) -> LayerwiseRun:
        """Begin a forward pass that pauses before every switchable layer."""
        h = self.stem(x)
        if self.spec.stem_pool:
            h = F.max_pool2d(h, kernel_size=3, stride=2, padding=1)
        record: list[BlockInput] = []
        steps = self._steps(h, self.spec.fixed_bits, 0, record)
        return LayerwiseRun(steps, self.check_widths, 0, record)

    def block_first_layers(self) -> tuple[int, ...]:
        """Index of each block's first switchable layer."""
        return self._block_first_layers

    def resume(self, block: int, given: BlockInput) -> LayerwiseRun:
        """A pass from block ``block``'s input onwards: how an earlier pass's prefix is reused
        when later layers are re-run at other widths."""
        record: list[BlockInput] = []
        steps = self._steps(given.activation, given.widths, block, record)
        return LayerwiseRun(steps, self.check_widths, self.block_first_layers()[block], record)

    def forward(self, x: torch.Tensor, config: Config) -> torch.Tensor:
        """Logits of ``x`` at ``config`` (one width, one per layer, or one per sample and layer)."""
        widths = self.expand_config(config)  # every layer checked here, once
        run = self.start(x)
        for w in widths:
            run._advance_checked(w)
        assert run.logits is not None
        return run.logits

    @torch.no_grad()
    def fold_for_inference(self) -> Supernet:
        """Eval mode with every width's quantized, BN-folded weights cached (see layers)."""
        self.eval()
        for layer in [self.stem, *self.switchable_layers, self.classifier]:
            layer.fold_for_inference()
        return self


def build_supernet(spec: ResNetSpec | str) -> Supernet:
    return Supernet(architecture(spec) if isinstance(spec, str) else spec)
