"""Stage 2 through its public entry point: a few steps on tiny data, saved into the model dir."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from abn.bitops import cost_table
from abn.errors import ConfigError
from abn.policy import CompiledPolicy, check_budgets
from abn.store import open_model_dir
from abn.train.policy import (
    CHARGE_BANDS,
    BandCharges,
    PolicyTrainConfig,
    policy_loss,
    sample_budgets,
    train_policy,
)


def tiny_config(
    model: Path, data_dir: Path, tmp_path: Path, **changes: object
) -> PolicyTrainConfig:
    """A policy run of a few tiny steps on CPU; ``changes`` override the defaults."""
    base = {
        "model": str(model),
        "data_dir": str(data_dir),
        "batch_size": 8,
        "samples_per_image": 2,
        "checkpoints": str(tmp_path / "ckpt"),
        "device": "cpu",
    }
    return PolicyTrainConfig(**{**base, **changes})


def test_training_a_few_steps_saves_a_loadable_verified_policy(
    tiny_model_dir: Path, tiny_fmnist_dir: Path, tmp_path: Path
) -> None:
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    before = open_model_dir(model).manifest["files"]["policy.safetensors"]["sha256"]
    cfg = tiny_config(model, tiny_fmnist_dir, tmp_path, steps=4, checkpoint_every=2)
    train_policy(cfg)
    md = open_model_dir(model)  # the sha256 of the new policy file is verified here
    assert md.manifest["files"]["policy.safetensors"]["sha256"] != before
    info = md.manifest["policy"]
    assert info["flops_fraction_of_network_macs"] < 0.01
    assert [h["step"] for h in info["training"]["history"]] == [2, 4]
    policy = md.load_policy()
    net = md.load_supernet()
    table = cost_table(net)
    budgets = torch.full((3,), table.min_bitops * 1.5, dtype=torch.float64)
    with torch.no_grad():
        r = CompiledPolicy(net, table, policy, torch.device("cpu")).rollout(
            torch.randn(3, 1, 28, 28), budgets
        )
    assert bool((r.bitops <= budgets).all())

    resumed = PolicyTrainConfig(**{**cfg.__dict__, "steps": 6, "resume": True})
    train_policy(resumed)
    history = open_model_dir(model).manifest["policy"]["training"]["history"]
    assert [h["step"] for h in history] == [2, 4, 6]


def test_sampled_budgets_cover_the_feasible_range_and_pass_the_check() -> None:
    from abn.supernet import build_supernet
    from tests.nets import calibrate

    table = cost_table(calibrate(build_supernet("resnet8_fmnist")))
    budgets = sample_budgets(table, 2000, torch.Generator().manual_seed(0))
    check_budgets(table, budgets)
    assert float(budgets.max()) <= table.max_bitops
    assert float(budgets.min()) < table.min_bitops * 1.2
    assert float(budgets.max()) > table.max_bitops * 0.9


def test_leave_one_out_baseline_rewards_only_the_better_rollout() -> None:
    log_prob = torch.zeros(4, requires_grad=True)
    reward = torch.tensor([1.0, 0.0, 5.0, 5.0])  # image 1: rollout 0 better; image 2: a tie
    policy_loss(log_prob, torch.zeros(4), reward, k=2, entropy_weight=0.0).backward()
    # gradient descent raises the log-probability where the advantage is positive
    assert log_prob.grad[0] < 0 < log_prob.grad[1]
    assert log_prob.grad[2] == 0 and log_prob.grad[3] == 0


def test_a_block_policy_trains_saves_and_loads_with_its_granularity(
    tiny_model_dir: Path, tiny_fmnist_dir: Path, tmp_path: Path
) -> None:
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    cfg = tiny_config(model, tiny_fmnist_dir, tmp_path, steps=2, granularity="block")
    train_policy(cfg)
    md = open_model_dir(model)
    policy = md.load_policy()
    assert policy is not None
    net = md.load_supernet()
    table = cost_table(net)
    assert md.manifest["policy"]["spec"]["decision_layers"] == [0, 2, 5]
    budgets = torch.linspace(table.min_bitops, table.max_bitops, 6, dtype=torch.float64)
    with torch.no_grad():
        r = CompiledPolicy(net, table, policy, torch.device("cpu")).rollout(
            torch.randn(6, 1, 28, 28), budgets
        )
    assert bool((r.bitops <= budgets).all())
    assert bool((r.widths[:, 0] == r.widths[:, 1]).all())  # block 1 at one width
    assert md.manifest["policy"]["spec"]["escalations"]  # the last decision is on by default
    assert len(md.manifest["policy"]["training"]["charges_per_band"]) == CHARGE_BANDS


def test_band_charges_rise_where_a_band_overspends_and_fall_where_it_underspends() -> None:
    from abn.supernet import build_supernet
    from tests.nets import calibrate

    table = cost_table(calibrate(build_supernet("resnet8_fmnist")))
    low, high = table.min_bitops, table.max_bitops
    charges = BandCharges(table, start=0.5, target=0.5, lr=0.1)
    cheap, dear = low * 1.05, high * 0.99  # the first and the last band
    assert charges.band(torch.tensor([low, cheap, dear, high])).tolist() == [0, 0, 9, 9]
    budgets = torch.tensor([cheap, cheap, dear, dear], dtype=torch.float64)
    # the cheap band spends its whole room, the dear band nothing above the cheapest
    spent = torch.tensor([cheap, cheap, low, low], dtype=torch.float64)
    assert charges.used(budgets, spent).tolist() == [1.0, 1.0, 0.0, 0.0]
    charges.update(budgets, spent)
    assert charges.values[0] == pytest.approx(0.55) and charges.values[9] == pytest.approx(0.45)
    assert bool((charges.values[1:9] == 0.5).all())  # bands with no image do not move
    fixed = BandCharges(table, start=0.5, target=None, lr=0.1)
    fixed.update(budgets, spent)
    assert bool((fixed.values == 0.5).all())


def test_init_from_starts_the_width_decisions_from_another_policy(
    tiny_model_dir: Path, tiny_fmnist_dir: Path, tmp_path: Path
) -> None:
    source = tmp_path / "source"  # its policy decides at every layer and has no last decision
    shutil.copytree(tiny_model_dir, source)
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    train_policy(tiny_config(model, tiny_fmnist_dir, tmp_path, steps=0, init_from=str(source)))
    new, old = open_model_dir(model).load_policy(), open_model_dir(source).load_policy()
    for name, tensor in old.state_dict().items():
        assert torch.equal(new.state_dict()[name], tensor), name
    assert new.escalation is not None and old.escalation is None
    stop, rerun = new.escalation[-1].bias[0], new.escalation[-1].bias[1:]
    assert bool((stop > rerun).all())  # it first keeps the answer it inherited
    with pytest.raises(ConfigError, match="decides at layers"):
        train_policy(
            tiny_config(
                model,
                tiny_fmnist_dir,
                tmp_path,
                steps=0,
                granularity="block",
                init_from=str(source),
            )
        )
