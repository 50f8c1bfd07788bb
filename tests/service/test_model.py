"""ServedModel with ABN_BACKEND: the bit-serial backend answers as the float one, or is
refused at load with the reason."""

from __future__ import annotations

import pytest
import torch

from abn.bitserial import cpu
from service.model import ModelLoadError, ServedModel

RUNNABLE = not cpu.missing_flags("avx512")


def test_bitserial_is_refused_where_the_cpu_lacks_vpopcntdq(monkeypatch, tiny_model_dir) -> None:
    monkeypatch.setattr(cpu, "cpu_flags", lambda: frozenset({"popcnt", "avx512f"}))
    with pytest.raises(ModelLoadError, match="ABN_BACKEND=bitserial") as err:
        ServedModel.load(tiny_model_dir, "cpu", "bitserial")
    assert "avx512_vpopcntdq" in str(err.value) and "ABN_BACKEND=float" in str(err.value)


def test_an_unknown_backend_names_the_known_ones(tiny_model_dir) -> None:
    with pytest.raises(ModelLoadError, match="float, bitserial"):
        ServedModel.load(tiny_model_dir, "cpu", "int8")


@pytest.mark.skipif(not RUNNABLE, reason="this CPU cannot run the avx512 kernel")
@pytest.mark.parametrize("backend", ["bitserial", "mixed"])
def test_the_kernel_backends_answer_as_float_under_the_policy(tiny_model_dir, backend) -> None:
    float_model = ServedModel.load(tiny_model_dir, "cpu", "float")
    served = ServedModel.load(tiny_model_dir, "cpu", backend)
    assert (float_model.card()["backend"], served.card()["backend"]) == ("float", backend)
    images = torch.randint(0, 256, (48, 1, 28, 28), generator=torch.Generator().manual_seed(0))
    images = images.to(torch.uint8)
    budgets = torch.linspace(float_model.min_bitops, float_model.max_bitops, 48).double()
    expected = float_model.infer(images, budgets, None)
    got = served.infer(images, budgets, None)
    assert torch.equal(expected.widths, got.widths)
    assert torch.equal(expected.bitops, got.bitops)
    assert torch.equal(expected.probabilities.argmax(1), got.probabilities.argmax(1))
    torch.testing.assert_close(got.probabilities, expected.probabilities, atol=1e-3, rtol=0)


@pytest.mark.skipif(not RUNNABLE, reason="this CPU cannot run the avx512 kernel")
def test_the_card_latency_table_is_measured_on_the_backend_at_warm_up(tiny_model_dir) -> None:
    model = ServedModel.load(tiny_model_dir, "cpu", "bitserial")
    assert model.card()["latency"] is None  # the manifest's is the float path's
    model.warm_up(32)
    latency = model.card()["latency"]
    assert latency["backend"] == "bitserial" and latency["batch_size"] == 32
    ms = {row["bit_widths"][0]: row["batch_ms"] for row in latency["rows"]}
    assert set(ms) == set(model.bit_candidates)
    assert ms[min(ms)] < ms[max(ms)]  # 1 x 1 bits against 8 x 8: 64 times the BitOps


def test_a_batch_pinned_throughout_answers_as_the_rollout_does(tiny_model_dir) -> None:
    """Every sample pinned (uniform rows, or mixed ones) skips the rollout's bookkeeping for
    the plain forward pass: the same probabilities, widths and BitOps, bit for bit."""
    model = ServedModel.load(tiny_model_dir, "cpu", "float")
    n, layers = 12, model.num_layers
    images = torch.randint(0, 256, (n, 1, 28, 28), generator=torch.Generator().manual_seed(1))
    images = images.to(torch.uint8)
    budgets = torch.full((n,), model.max_bitops, dtype=torch.float64)
    choice = torch.randint(0, len(model.bit_candidates), (n, layers))
    mixed = torch.tensor(model.bit_candidates)[choice]
    for pinned in (torch.full((n, layers), model.bit_candidates[0]), mixed):
        got = model.infer(images, budgets, pinned)
        with torch.inference_mode():
            x = model.normalizer(images)
            rollout = model.compiled.rollout(x, budgets, pinned=pinned)
        assert torch.equal(got.probabilities, torch.softmax(rollout.logits.float(), dim=1))
        assert torch.equal(got.widths, rollout.widths.long())
        assert torch.equal(got.bitops, rollout.bitops.double())
