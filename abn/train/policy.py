"""Stage 2: train the per-image width policy on the frozen supernet (REINFORCE, RLOO baseline).

Each step draws a batch of training images and one budget per image across the feasible range
(half uniform, half log-uniform, so cheap budgets where decisions matter most are well covered),
then rolls out ``samples_per_image`` sampled width sequences per (image, budget). The reward is
``log p(true class) - bitops_charge * bitops / max_bitops``; each rollout's baseline is the mean
reward of the other rollouts of the same image and budget (leave-one-out), which removes the
budget's and the image's difficulty from the advantage without a learned critic.

The supernet is frozen and runs with folded weights; only the policy gets gradients.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from abn.bitops import CostTable, cost_table
from abn.datasource import load_for_model
from abn.policy import PolicySpec, WidthPolicy, rollout
from abn.preprocess import normalize
from abn.store import open_model_dir, save_policy
from abn.train.common import has_checkpoint, load_checkpoint, resolve_device, save_checkpoint


@dataclass
class PolicyTrainConfig:
    model: str  # the model directory (stage 1's --out); its policy is written there
    data_dir: str | None = None  # Fashion-MNIST instead of the model's recorded data
    image_folder: str | None = None  # an image folder instead of the model's recorded data
    steps: int = 800
    batch_size: int = 128  # images per step; each is rolled out samples_per_image times
    samples_per_image: int = 4
    lr: float = 3e-3
    hidden: int = 32
    granularity: str = "layer"  # layer | block | network: where the policy decides
    bitops_charge: float = 0.1
    entropy_weight: float = 0.01
    seed: int = 0
    device: str = "auto"
    checkpoint_every: int = 100
    checkpoints: str | None = None  # default: runs/<model name>-policy
    resume: bool = False


def sample_budgets(table: CostTable, n: int, generator: torch.Generator) -> torch.Tensor:
    """Budgets across the feasible range: half uniform, half log-uniform."""
    low, high = table.min_bitops, table.max_bitops
    u = torch.rand(n, generator=generator, dtype=torch.float64)
    uniform = low + u * (high - low)
    log_uniform = torch.exp(math.log(low) + u * (math.log(high) - math.log(low)))
    pick = torch.rand(n, generator=generator) < 0.5
    return torch.where(pick, uniform, log_uniform)


def policy_loss(
    log_prob: torch.Tensor,
    entropy: torch.Tensor,
    reward: torch.Tensor,
    k: int,
    entropy_weight: float,
) -> torch.Tensor:
    """REINFORCE with a leave-one-out baseline over the ``k`` rollouts of each image."""
    r = reward.view(-1, k)
    baseline = (r.sum(dim=1, keepdim=True) - r) / max(k - 1, 1)
    advantage = (r - baseline).reshape(-1).detach()
    return -(advantage * log_prob).mean() - entropy_weight * entropy.mean()


def train_policy(cfg: PolicyTrainConfig) -> Path:
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    md = open_model_dir(cfg.model)
    train = load_for_model(md, ["train"], cfg.data_dir, cfg.image_folder)["train"]
    net = md.load_supernet(device)
    for p in net.parameters():
        p.requires_grad_(False)
    net.fold_for_inference()
    table = cost_table(net)
    policy = WidthPolicy(PolicySpec.for_table(table, cfg.hidden, cfg.granularity)).to(device)
    optimizer = torch.optim.Adam(policy.parameters(), lr=cfg.lr)
    ckpt_dir = Path(cfg.checkpoints or f"runs/{md.manifest['name']}-policy")
    start, history = 0, []
    if cfg.resume and has_checkpoint(ckpt_dir):
        meta = load_checkpoint(ckpt_dir, policy, optimizer, device)
        start, history = meta["step"], meta["history"]
        print(f"resumed policy training from {ckpt_dir} at step {start}", flush=True)

    k = cfg.samples_per_image
    bar = tqdm(total=cfg.steps, initial=start, desc="policy", mininterval=2.0, dynamic_ncols=True)
    started = time.time()
    running: dict[str, float] = {}
    for step in range(start, cfg.steps):
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        index = torch.randint(0, len(train), (cfg.batch_size,), generator=gen)
        budgets = sample_budgets(table, cfg.batch_size, gen).repeat_interleave(k)
        x = normalize(train.images[index].to(device), md.input_spec).repeat_interleave(k, 0)
        y = train.labels[index].to(device).repeat_interleave(k)
        r = rollout(net, table, x, budgets, policy, sample=True, generator=gen)
        log_p = F.log_softmax(r.logits, dim=1).gather(1, y[:, None]).squeeze(1)
        reward = log_p - cfg.bitops_charge * (r.bitops / table.max_bitops).float()
        loss = policy_loss(r.log_prob, r.entropy, reward, k, cfg.entropy_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        stats = {
            "reward": float(reward.mean()),
            "acc": float((r.logits.argmax(1) == y).float().mean()),
            "use": float((r.bitops / budgets).mean()),
            "entropy": float(r.entropy.detach().mean()),
        }
        running = {n: 0.95 * running.get(n, v) + 0.05 * v for n, v in stats.items()}
        bar.set_postfix({n: f"{v:.3f}" for n, v in running.items()})
        bar.update(1)
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps:
            history.append({"step": step + 1, **running})
            save_checkpoint(
                ckpt_dir,
                policy,
                optimizer,
                {"step": step + 1, "history": history, "config": asdict(cfg)},
            )
    bar.close()
    info = {
        "spec": policy.spec.to_dict(),
        "flops_per_image": policy.flops_per_image(table),
        "flops_fraction_of_network_macs": policy.flops_per_image(table) / table.total_macs,
        "training": {
            "method": "REINFORCE with leave-one-out baseline",
            "config": asdict(cfg),
            "history": history,
            "wall_seconds_this_run": time.time() - started,
        },
    }
    save_policy(md.path, policy.cpu().eval(), info)
    print(json.dumps({"saved_policy": str(md.path), "flops_per_image": info["flops_per_image"]}))
    return md.path
