"""The mixed backend's dispatch: each call on the form whose fitted cost is lower for its
width and group size, and a network so dispatched answers as the float one."""

from __future__ import annotations

import pytest
import torch

from abn.bitops import cost_table
from abn.bitserial.dispatch import (
    FastestForm,
    KernelOption,
    LinearCost,
    WidthChoice,
    use_fastest_kernels,
)
from abn.store import DEFAULT_MODEL_DIR, open_model_dir

from .conftest import RUNNABLE


class RecordingForm:
    """An inference form that records the group sizes it ran and answers with its tag."""

    def __init__(self, tag: float) -> None:
        self.tag, self.sizes = tag, []

    def run(self, x, bits, in_bits, stride, padding) -> torch.Tensor:
        self.sizes.append(x.shape[0])
        return torch.full((x.shape[0],), self.tag)


def test_each_call_runs_on_the_form_cheaper_for_its_width_and_size() -> None:
    flat, steep = RecordingForm(0.0), RecordingForm(1.0)
    # 100 + 1 n against 10 + 5 n: the steep form is cheaper up to 22.5 images
    options = (
        KernelOption("float", flat, LinearCost(100.0, 1.0)),
        KernelOption("bitserial", steep, LinearCost(10.0, 5.0)),
    )
    cheap_everywhere = (
        KernelOption("float", flat, LinearCost(100.0, 1.0)),
        KernelOption("bitserial", steep, LinearCost(10.0, 0.5)),
    )
    steep_everywhere = (
        KernelOption("float", flat, LinearCost(100.0, 1.0)),
        KernelOption("bitserial", steep, LinearCost(90.0, 50.0)),  # crossing at 0.2 images
    )
    form = FastestForm(
        {
            3: WidthChoice.between(*options),
            1: WidthChoice.between(*cheap_everywhere),
            8: WidthChoice.between(*steep_everywhere),
        }
    )
    for n in (1, 22, 23, 64):
        form.run(torch.zeros(n, 2, 3, 3), 3, 8, 1, 1)
    form.run(torch.zeros(64, 2, 3, 3), 1, 8, 1, 1)
    form.run(torch.zeros(1, 2, 3, 3), 8, 8, 1, 1)
    assert steep.sizes == [1, 22, 64] and flat.sizes == [23, 64, 1]
    assert form.crossings() == {
        3: "bitserial up to 22.5 images, float above",
        1: "bitserial at every size",
        8: "float at every size",
    }


@pytest.mark.skipif(not RUNNABLE, reason="this CPU runs no bit-serial kernel")
def test_a_dispatched_network_answers_as_the_float_one_at_every_width_and_size() -> None:
    directory = open_model_dir(DEFAULT_MODEL_DIR)
    reference = directory.load_supernet("cpu").fold_for_inference()
    mixed = directory.load_supernet("cpu").fold_for_inference()
    report = use_fastest_kernels(mixed, cost_table(mixed).layer_input_shapes, RUNNABLE[0])
    assert list(report) == mixed.layer_names
    assert all(set(widths) == set(mixed.bit_candidates) for widths in report.values())
    g = torch.Generator().manual_seed(3)
    with torch.inference_mode():
        for n in (2, 40):  # on either side of most crossings
            x = torch.randn(n, 1, 28, 28, generator=g)
            for bits in mixed.bit_candidates:
                expected, got = reference(x, bits), mixed(x, bits)
                assert torch.equal(expected.argmax(1), got.argmax(1)), (n, bits)
                torch.testing.assert_close(got, expected, atol=1e-3, rtol=0)
