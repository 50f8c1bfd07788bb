"""The model that ships in model_store/: intact, and as accurate as its manifest says."""

from __future__ import annotations

import itertools

import pytest
import torch

from abn.bitops import cost_table
from abn.data import DEFAULT_FASHION_MNIST_DIR, load_fashion_mnist
from abn.errors import DatasetNotFoundError
from abn.evaluate import static_accuracy
from abn.policy import CompiledPolicy, check_budgets
from abn.preprocess import normalize
from abn.store import DEFAULT_MODEL_DIR, open_model_dir

SAMPLE = 500


@pytest.fixture(scope="module")
def shipped():
    if not (DEFAULT_MODEL_DIR / "manifest.json").is_file():
        pytest.fail(f"the shipped model directory {DEFAULT_MODEL_DIR} is missing")
    return open_model_dir(DEFAULT_MODEL_DIR)  # verifies every sha256


@pytest.fixture(scope="module")
def test_images():
    try:
        test = load_fashion_mnist("test")
    except DatasetNotFoundError:
        pytest.skip(f"Debian's dataset-fashion-mnist is absent ({DEFAULT_FASHION_MNIST_DIR})")
    # a fixed random sample: the first 500 test images are easier than the set (94.4 % vs 91.3)
    sample = torch.randperm(len(test), generator=torch.Generator().manual_seed(0))[:SAMPLE]
    return test.subset(sample)


def test_manifest_lists_weights_and_policy_with_hashes(shipped) -> None:
    files = shipped.manifest["files"]
    assert set(files) == {"supernet.safetensors", "policy.safetensors"}
    assert all(len(entry["sha256"]) == 64 for entry in files.values())


def test_every_bn_pair_is_calibrated_and_the_set_has_a_one_bit_mode(shipped) -> None:
    net = shipped.load_supernet()
    assert shipped.manifest["architecture"]["batch_norm"] == "transitional"
    assert min(net.bit_candidates) == 1
    for layer in net.switchable_layers:
        assert layer.bn.unseen_pairs() == [], layer.name
    calibration = shipped.manifest["training"]["stage1"]["bn_calibration"]
    assert calibration["batches_per_pair"] >= 10


def test_uniform_accuracies_match_the_manifest(shipped, test_images) -> None:
    net = shipped.load_supernet().fold_for_inference()
    static = shipped.manifest["accuracy"]["static"]
    for bits in net.bit_candidates:
        config = [bits] * net.num_switchable
        claimed = next(s["accuracy"] for s in static if s["bit_widths"] == config)
        measured = static_accuracy(net, test_images, shipped.input_spec, config)
        assert abs(measured - claimed) <= 0.02, (bits, measured, claimed)


def test_manifest_tables_show_the_budget_buys_accuracy(shipped) -> None:
    """The card's own tables: ordered widths, mixed configurations near the uniform curve,
    and the baselines a user could build, as ``abn evaluate`` measured them."""
    accuracy = shipped.manifest["accuracy"]
    assert all(o["difference"] >= -0.0015 for o in accuracy["uniform_ordering"])
    mixing = accuracy["random_configs"]
    assert mixing["count"] == 100
    assert mixing["min_gap_to_uniform_curve"] <= mixing["mean_gap_to_uniform_curve"] <= 0.0
    cheapest = min(accuracy["static"], key=lambda s: s["bitops"])
    assert mixing["min"] - cheapest["accuracy"] == pytest.approx(
        mixing["worst_minus_cheapest_uniform"]
    )
    baselines = accuracy["baselines"]
    assert baselines["confidence_cascade"] and baselines["layerwise_cascade"]
    assert baselines["oracle"]["accuracy"] >= max(s["accuracy"] for s in accuracy["static"])


def test_policy_keeps_every_budget_on_real_images(shipped, test_images) -> None:
    net = shipped.load_supernet().fold_for_inference()
    policy = shipped.load_policy()
    table = cost_table(net)
    x = normalize(test_images.images, shipped.input_spec)
    gen = torch.Generator().manual_seed(0)
    span = table.max_bitops - table.min_bitops
    budgets = table.min_bitops + torch.rand(SAMPLE, generator=gen, dtype=torch.float64) * span
    check_budgets(table, budgets)
    with torch.no_grad():
        r = CompiledPolicy(net, table, policy, torch.device("cpu")).rollout(x, budgets)
    assert bool((r.bitops <= budgets).all())


def test_adaptive_accuracy_matches_the_manifest(shipped, test_images) -> None:
    """The policy shipped is the one the manifest's adaptive table was measured with."""
    net = shipped.load_supernet().fold_for_inference()
    policy = shipped.load_policy()
    table = cost_table(net)
    x = normalize(test_images.images, shipped.input_spec)
    compiled = CompiledPolicy(net, table, policy, torch.device("cpu"))
    for row in shipped.manifest["accuracy"]["adaptive"][::3]:
        budgets = torch.full((SAMPLE,), row["budget"], dtype=torch.float64)
        with torch.no_grad():
            r = compiled.rollout(x, budgets)
        accuracy = float((r.logits.argmax(1) == test_images.labels).double().mean())
        assert abs(accuracy - row["accuracy"]) <= 0.02, (row, accuracy)
        assert float(r.bitops.mean()) == pytest.approx(row["mean_bitops"], rel=0.1), row


def test_model_card_serves_the_baselines(shipped) -> None:
    """``GET /v1/model`` carries the cascade and oracle tables, valid against its schema."""
    from service.model import ServedModel
    from service.schemas import ModelCard

    card = ModelCard.model_validate(ServedModel.load(shipped.path, "cpu").card())
    assert card.bit_candidates == [1, 2, 3, 4, 8]
    assert card.accuracy.baselines is not None
    assert card.accuracy.baselines.confidence_cascade and card.accuracy.baselines.oracle


def test_the_shipped_policy_decides_in_sequence_and_spends_more_as_the_budget_grows(
    shipped,
) -> None:
    """More than one decision per image, each at its depth, plus the last decision (stop or
    re-run); and, in the card's own table, mean BitOps that rise with the budget until the
    accuracy stops rising."""
    spec = shipped.manifest["policy"]["spec"]
    assert len(spec["decision_layers"]) > 1 and spec["escalations"]
    assert shipped.manifest["policy"]["flops_fraction_of_network_macs"] < 0.01
    rows = sorted(shipped.manifest["accuracy"]["adaptive"], key=lambda r: r["budget"])
    best = max(r["accuracy"] for r in rows)
    for cheaper, dearer in itertools.pairwise(rows):
        if cheaper["accuracy"] < best - 0.002:  # not saturated yet
            assert dearer["mean_bitops"] >= cheaper["mean_bitops"] * 0.99, (cheaper, dearer)


def test_served_reruns_report_the_first_pass_and_pay_for_both(shipped, test_images) -> None:
    """Through the serving path: where the policy re-ran later layers, the first pass's widths
    come back, the answering widths keep its prefix, and the cost is both passes'."""
    from service.model import ServedModel

    served = ServedModel.load(shipped.path, "cpu")
    table = served.table
    budgets = torch.full((SAMPLE,), table.max_bitops, dtype=torch.float64)
    out = served.infer(test_images.images, budgets, None)
    assert out.first_pass is not None and out.reran is not None
    reran = out.reran
    assert bool(reran.any()), "the shipped policy re-ran no image at the top budget"
    starts = shipped.load_supernet().block_first_layers()
    rows = zip(out.first_pass[reran].tolist(), out.widths[reran].tolist(), strict=True)
    for (first, answered), cost in zip(rows, out.bitops[reran].tolist(), strict=True):
        assert cost <= table.max_bitops
        # re-run from some block's first layer k at one width: prefix reused, both paid
        explained = [
            k
            for k in starts
            if answered[:k] == first[:k]
            and len(set(answered[k:])) == 1
            and cost
            == pytest.approx(
                table.cost(first)
                + sum(table.layer_cost(i, answered[i]) for i in range(k, len(first)))
            )
        ]
        assert explained, (first, answered, cost)
    assert bool((out.bitops[~reran] == table.batch_cost(out.widths[~reran])).all())
