"""Fake quantizers with straight-through gradients: one learned step size per bit-width.

Choice: LSQ (Esser et al., 2020) for weights, with one learned step per width per layer,
rather than AdaBits' tanh-normalised uniform quantizer. Why:

* at 2 bits the step is the whole story; a learned step finds the clipping point that
  minimises the task loss, whereas tanh normalisation fixes it at max|tanh(w)|, which an
  outlier weight drags up and so wastes levels for every other weight;
* it is what ABN's first author uses for the same weight-shared, per-layer-width supernet
  (1hunters/retraining-free-quantization), so the paper's results were produced with it;
* the per-width step is exactly the "one clipping level per width" idea of AdaBits' S-CL,
  applied to weights too, and it costs one scalar per width per layer.

Activations use the same estimator on unsigned levels: the learned step times the top level is
the Switchable Clipping Level (one per width per layer, as AdaBits' S-CL). Inputs to every
switchable layer follow a ReLU, so activations are unsigned.

Both quantizers are uniform: at width ``b`` a weight takes one of ``2**b`` signed levels
``s * {-2**(b-1), ..., 2**(b-1) - 1}`` and an activation one of ``2**b`` unsigned levels
``s * {0, ..., 2**b - 1}``.

One width is special: at 1 bit a weight is *binary*, ``s * sign(w)`` with ``sign(0) = +1``
(two levels symmetric about zero, as in XNOR-Net/Bi-Real), because the signed grid above would
give ``{-s, 0}``, a useless pair. A 1-bit activation is the unsigned grid's ``{0, alpha}``: a
learned threshold at ``alpha / 2``, with its own clipping level like every other width.

The straight-through arithmetic on activations (the tensors that are large) runs in one
autograd function, :class:`_LSQFunction`: a forward of three ops and a backward of two, where
composing ``round_ste``/``scale_grad`` left nine nodes and their saved tensors per layer and
path in the graph.
"""

from __future__ import annotations

import math

import torch
from torch import nn

FULL_PRECISION = 32  # a "width" that means no quantization at all: the FP32 reference model


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round in the forward pass, identity in the backward pass (straight-through estimator)."""
    return (x.round() - x).detach() + x


def scale_grad(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Leave the value unchanged but multiply its gradient by ``scale`` (LSQ's step-size grad)."""
    return (x - x * scale).detach() + x * scale


def signed_levels(bits: int) -> tuple[int, int]:
    """Lowest and highest integer level of a signed ``bits``-wide quantizer."""
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def unsigned_levels(bits: int) -> tuple[int, int]:
    """Lowest and highest integer level of an unsigned ``bits``-wide quantizer."""
    return 0, 2**bits - 1


class _LSQFunction(torch.autograd.Function):
    """``step * round(clamp(x / step, low, high))`` with LSQ's gradients (Esser et al., 2020):
    ``d/dx`` is 1 inside the clip range and 0 outside; ``d/dstep`` is ``round(u) - u`` inside and
    the clipped level outside (``u = x / step``), times ``grad_scale``.

    The forward pass leaves behind exactly what the backward pass reads, as float tensors (a
    float mask multiplies faster than ``masked_fill``/``where`` on the CPU): the mask of elements
    inside the clip range and the per-element step derivative ``q - u * inside``, so the
    backward pass is one multiply and one dot product.
    """

    @staticmethod
    def forward(ctx, x, step, low, high, grad_scale):  # noqa: ANN001, ANN205 (autograd API)
        u = x / step
        clipped = torch.clamp(u, low, high)
        inside = (clipped == u).to(x.dtype)
        q = clipped.round_()
        out = q * step
        d_step = torch.addcmul(q, u, inside, value=-1.0)  # q - u inside; q (= the level) outside
        ctx.save_for_backward(inside, d_step)
        ctx.grad_scale = grad_scale
        return out

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        inside, d_step = ctx.saved_tensors
        grad_x = grad * inside if ctx.needs_input_grad[0] else None
        grad_step = None
        if ctx.needs_input_grad[1]:
            grad_step = torch.dot(grad.reshape(-1), d_step.reshape(-1)) * ctx.grad_scale
        return grad_x, grad_step, None, None, None


def lsq_quantize(
    x: torch.Tensor, step: torch.Tensor, low: int, high: int, step_grad_scale: float | None = None
) -> torch.Tensor:
    """Quantize ``x`` to ``step * k`` for integers ``k`` in ``[low, high]``, LSQ gradients.

    The step's gradient is scaled by ``1 / sqrt(numel * high)`` as in LSQ so that step sizes
    learn at a rate comparable to the weights whatever the tensor size; a caller whose learned
    parameter is not the step itself passes the scale that makes it learn like one.
    """
    if not torch.is_grad_enabled() or not (x.requires_grad or step.requires_grad):
        # Inference: same values, without the straight-through bookkeeping (half the ops).
        return torch.clamp(x / step, low, high).round_().mul_(step)
    if step_grad_scale is None:
        step_grad_scale = lsq_grad_scale(x, high)
    return _LSQFunction.apply(x, step, low, high, step_grad_scale)


def binarize(weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``scale * sign(weight)`` (``sign(0) = +1``): the 1-bit weight quantizer.

    Gradients as for a two-level LSQ grid at ``+-scale``: the weight's passes straight through
    where ``|w| <= scale`` (clipped STE), the scale's is LSQ's, scaled by ``1/sqrt(numel)``.
    """
    signs = torch.where(weight >= 0, 1.0, -1.0).to(weight.dtype)
    if not torch.is_grad_enabled() or not (weight.requires_grad or scale.requires_grad):
        return signs * scale
    s = scale_grad(scale, 1.0 / math.sqrt(weight.numel()))
    u = torch.clamp(weight / s, -1.0, 1.0)
    return ((signs - u).detach() + u) * s


def lsq_grad_scale(x: torch.Tensor, high: int) -> float:
    return 1.0 / math.sqrt(x.numel() * max(high, 1))


def initial_weight_step(weight: torch.Tensor, bits: int) -> float:
    """LSQ's initial step, ``2 * mean|w| / sqrt(Qp)``, from the full-precision weight; at 1 bit
    the binary scale ``mean|w|``, which minimises ``||w - s * sign(w)||``."""
    if bits == 1:
        return max(weight.detach().abs().mean().item(), 1e-8)
    _, high = signed_levels(min(bits, 16))
    return max(2.0 * weight.detach().abs().mean().item() / math.sqrt(high), 1e-8)


def initial_activation_clip(bits: int) -> float:
    """A starting clipping level for post-BatchNorm ReLU activations (roughly unit scale).

    Narrow widths clip lower: with four levels, resolving the bulk of a half-normal beats
    covering its tail. Learning moves each level from here.
    """
    return {1: 1.0, 2: 1.5, 3: 2.2, 4: 2.8, 5: 3.4}.get(bits, 4.0)


class SwitchableWeightQuantizer(nn.Module):
    """Quantizes one shared full-precision weight at any width of its candidate set.

    Holds one learned step per width, stored in a ``ParameterDict`` keyed by the width so the
    state dict names say which width a step belongs to.
    """

    def __init__(self, weight: torch.Tensor, bit_candidates: tuple[int, ...]) -> None:
        super().__init__()
        self.bit_candidates = tuple(bit_candidates)
        self.steps = nn.ParameterDict(
            {
                str(b): nn.Parameter(torch.tensor(initial_weight_step(weight, b)))
                for b in self.bit_candidates
            }
        )

    def forward(self, weight: torch.Tensor, bits: int) -> torch.Tensor:
        if bits >= FULL_PRECISION:
            return weight
        step = self.step(bits)
        if bits == 1:
            return binarize(weight, step)
        low, high = signed_levels(bits)
        return lsq_quantize(weight, step, low, high)

    def step(self, bits: int) -> torch.Tensor:
        """The step (at 1 bit the scale) of width ``bits``, as :meth:`forward` applies it."""
        return self.steps[str(bits)].abs() + 1e-8

    @torch.no_grad()
    def integer_levels(self, weight: torch.Tensor, bits: int) -> torch.Tensor:
        """The integer level of every weight at ``bits``, so that :meth:`forward` is
        ``levels * step(bits)``: in ``signed_levels(bits)``, or ``{-1, +1}`` at 1 bit. For
        integer kernels (abn.bitserial), which compute with the levels and scale afterwards."""
        if bits == 1:
            return torch.where(weight >= 0, 1, -1)
        low, high = signed_levels(bits)
        return torch.clamp(weight / self.step(bits), low, high).round_().long()


class MaxAbsWeightQuantizer(nn.Module):
    """Fixed-width symmetric quantizer whose step is ``max|w| / (2**(b-1) - 1)``: for the 8-bit
    stem and classifier, where a learned step buys nothing and, on the classifier's tiny weights
    at a high learning rate, was seen to diverge (step 0.0014 -> 3.4 within two epochs)."""

    def __init__(self, bits: int) -> None:
        super().__init__()
        self.bits = bits

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if self.bits >= FULL_PRECISION:
            return weight
        low, high = signed_levels(self.bits)
        step = weight.detach().abs().max().clamp_min(1e-8) / high
        if not torch.is_grad_enabled() or not weight.requires_grad:
            return torch.clamp(weight / step, low, high).round_().mul_(step)
        return round_ste(torch.clamp(weight / step, low, high)) * step


class SwitchableActivationQuantizer(nn.Module):
    """Quantizes a non-negative activation with one learned clipping level per width (S-CL).

    ``switchable=False`` keeps one clipping level for every width: the ablation that shows
    what S-CL is worth.

    The parameter stored is the clipping level ``alpha``; the step is ``alpha / (2**b - 1)``.
    Values above ``alpha`` saturate, so ``alpha`` is exactly the top of the clip range.
    """

    def __init__(self, bit_candidates: tuple[int, ...], switchable: bool = True) -> None:
        super().__init__()
        self.bit_candidates = tuple(bit_candidates)
        self.switchable = switchable
        keys = [str(b) for b in self.bit_candidates] if switchable else ["shared"]
        start = min(self.bit_candidates)
        self.clip_levels = nn.ParameterDict(
            {
                k: nn.Parameter(
                    torch.tensor(initial_activation_clip(int(k) if switchable else start))
                )
                for k in keys
            }
        )

    def clip_level(self, bits: int) -> torch.Tensor:
        key = str(bits) if self.switchable else "shared"
        return self.clip_levels[key].abs() + 1e-8

    @torch.no_grad()
    def step_for(self, bits: int) -> tuple[float, int]:
        """``(step, highest level)`` of width ``bits`` as Python numbers, for a frozen network;
        ``(1.0, 0)`` at full precision, which means "do not quantize". The step is the float32
        value :meth:`forward` computes, so quantizing with it gives the same result."""
        if bits >= FULL_PRECISION:
            return 1.0, 0
        high = unsigned_levels(bits)[1]
        return float(self.clip_level(bits) / high), high

    def forward(self, x: torch.Tensor, bits: int) -> torch.Tensor:
        if bits >= FULL_PRECISION:
            return x
        low, high = unsigned_levels(bits)
        alpha = self.clip_level(bits)
        if torch.is_grad_enabled() and alpha.requires_grad:
            # alpha = high * step, so d/d(alpha) is d/d(step) / high; scaling alpha's gradient
            # by high^2 times LSQ's factor makes alpha move exactly as LSQ would move the step
            # (times high). Without it the 8-bit clip level would learn ~65000x too slowly.
            alpha = scale_grad(alpha, lsq_grad_scale(x, high) * high * high)
        return lsq_quantize(x, alpha / high, low, high, step_grad_scale=1.0)
