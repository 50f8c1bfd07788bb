"""Stage 2: train the per-image width policy on the frozen supernet (REINFORCE, RLOO baseline).

Each step draws a batch of training images and one budget per image across the feasible range
(half uniform, half log-uniform, so cheap budgets where decisions matter most are well covered),
then rolls out ``samples_per_image`` sampled width sequences per (image, budget), the last
decision (stop or re-run from a block boundary) included. The reward is
``log p(true class) - charge(budget band) * used``, ``used`` being the share of what the budget
allows above the cheapest configuration that was spent (so one charge weighs the same at every
budget); each rollout's baseline is the mean reward of the other rollouts of the same image and
budget (leave-one-out), which removes the budget's and the image's difficulty from the
advantage without a learned critic.

The charge is a Lagrange multiplier per budget band (:class:`BandCharges`): it rises while the
band's images spend more than ``spend_target`` of what their budget allows above the cheapest
configuration, and falls while they spend less. A single charge for every budget made the
policy spend the same at every budget above a point; per band, a larger budget is spent, and
the policy learns on which images.

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
from abn.data import ImageSet
from abn.datasource import load_for_model
from abn.devices import resolve_device
from abn.errors import ConfigError
from abn.policy import CompiledPolicy, PolicySpec, WidthPolicy
from abn.preprocess import Normalizer
from abn.store import open_model_dir, save_policy
from abn.train.common import has_checkpoint, load_checkpoint, save_checkpoint, step_generator


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
    bitops_charge: float = 0.1  # the charge every band starts from (and keeps, without a target)
    spend_target: float | None = 0.5  # per band, mean (spent - cheapest) / (budget - cheapest)
    charge_lr: float = 0.05  # dual ascent step of the per-band charges
    escalate: bool = True  # give the policy its last decision: stop or re-run from a block
    init_from: str | None = None  # a model directory whose policy's width decisions start this one
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


WARM_START_STOP_BIAS = 2.0  # a warm-started policy first keeps its own answer ~88 % of the time
CHARGE_BANDS = 10  # log-spaced budget bands, each with its own BitOps charge
MAX_CHARGE = 2.0  # a charge this high already makes the cheapest configuration the best reply


class BandCharges:
    """One BitOps charge per log-spaced budget band, moved by dual ascent towards a spending
    target (the Lagrangian of "mean spend above the cheapest <= target x what the budget
    allows above the cheapest")."""

    def __init__(self, table: CostTable, start: float, target: float | None, lr: float) -> None:
        self.low, self.high = table.min_bitops, table.max_bitops
        self.values = torch.full((CHARGE_BANDS,), float(start), dtype=torch.float64)
        self.target, self.lr = target, lr

    def band(self, budgets: torch.Tensor) -> torch.Tensor:
        span = math.log(self.high) - math.log(self.low)
        where = (torch.log(budgets.double().cpu()) - math.log(self.low)) / max(span, 1e-12)
        return (where * CHARGE_BANDS).long().clamp(0, CHARGE_BANDS - 1)

    def of(self, budgets: torch.Tensor) -> torch.Tensor:
        return self.values[self.band(budgets)].to(budgets.device)

    def used(self, budgets: torch.Tensor, spent: torch.Tensor) -> torch.Tensor:
        """The fraction of what each budget allows above the cheapest configuration that was
        spent: the unit of the charge, so one charge means the same at every budget."""
        room = (budgets.double() - self.low).clamp(min=1.0)
        return ((spent.double() - self.low) / room).clamp(0.0, 1.0)

    def update(self, budgets: torch.Tensor, spent: torch.Tensor) -> None:
        """One dual step per band present in the batch (no-op without a target)."""
        if self.target is None:
            return
        used = self.used(budgets, spent).cpu()
        bands = self.band(budgets)
        for b in bands.unique().tolist():
            gap = float(used[bands == b].mean()) - self.target
            self.values[b] = min(max(float(self.values[b]) + self.lr * gap, 0.0), MAX_CHARGE)


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
    classes = net.spec.num_classes if cfg.escalate else 0
    policy = WidthPolicy(PolicySpec.for_table(table, cfg.hidden, cfg.granularity, classes))
    if cfg.init_from:
        warm_start_widths(policy, cfg.init_from)
    policy = policy.to(device)
    optimizer = torch.optim.Adam(policy.parameters(), lr=cfg.lr)
    charges = BandCharges(table, cfg.bitops_charge, cfg.spend_target, cfg.charge_lr)
    compiled = CompiledPolicy(net, table, policy, device)
    normalizer = Normalizer.for_spec(md.input_spec, device)
    ckpt_dir = Path(cfg.checkpoints or f"runs/{md.manifest['name']}-policy")
    start, history = 0, []
    if cfg.resume and has_checkpoint(ckpt_dir):
        meta = load_checkpoint(ckpt_dir, policy, optimizer, device)
        start, history = meta["step"], meta["history"]
        charges.values = torch.tensor(meta["charges"], dtype=torch.float64)
        print(f"resumed policy training from {ckpt_dir} at step {start}", flush=True)

    bar = tqdm(total=cfg.steps, initial=start, desc="policy", mininterval=2.0, dynamic_ncols=True)
    started = time.time()
    running: dict[str, float] = {}
    for step in range(start, cfg.steps):
        stats = _train_step(cfg, step, compiled, optimizer, charges, train, normalizer)
        running = {n: 0.95 * running.get(n, v) + 0.05 * v for n, v in stats.items()}
        bar.set_postfix({n: f"{v:.3f}" for n, v in running.items()})
        bar.update(1)
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps:
            history.append({"step": step + 1, **running})
            meta = {"step": step + 1, "history": history, "config": asdict(cfg)}
            save_checkpoint(
                ckpt_dir, policy, optimizer, {**meta, "charges": charges.values.tolist()}
            )
    bar.close()
    info = {
        "spec": policy.spec.to_dict(),
        "flops_per_image": policy.flops_per_image(table),
        "flops_fraction_of_network_macs": policy.flops_per_image(table) / table.total_macs,
        "training": {
            "method": "REINFORCE with leave-one-out baseline, a Lagrange charge per budget band",
            "config": asdict(cfg),
            "history": history,
            "charges_per_band": charges.values.tolist(),
            "wall_seconds_this_run": time.time() - started,
        },
    }
    save_policy(md.path, policy.cpu().eval(), info)
    print(json.dumps({"saved_policy": str(md.path), "flops_per_image": info["flops_per_image"]}))
    return md.path


def warm_start_widths(policy: WidthPolicy, source: str) -> None:
    """Start the width decisions from another model's policy with the same decision points,
    widths and hidden size (its spending behaviour is a better start than a fresh head); the
    last decision, when the source has none, starts fresh, leaning towards "stop"."""
    other = open_model_dir(source).load_policy()
    if other is None:
        raise ConfigError(f"--init-from {source}: that model directory has no policy")
    mine, theirs = policy.spec, other.spec
    if (mine.decisions(), mine.bit_candidates, mine.hidden) != (
        theirs.decisions(),
        theirs.bit_candidates,
        theirs.hidden,
    ):
        raise ConfigError(
            f"--init-from {source}: its policy decides at layers {list(theirs.decisions())} over "
            f"widths {list(theirs.bit_candidates)} with hidden size {theirs.hidden}; this one "
            f"needs {list(mine.decisions())}, {list(mine.bit_candidates)}, {mine.hidden}"
        )
    state = {k: v for k, v in other.state_dict().items() if not k.startswith("escalation.")}
    policy.load_state_dict(state, strict=False)
    if policy.escalation is not None and other.escalation is None:
        with torch.no_grad():
            policy.escalation[-1].bias[0] += WARM_START_STOP_BIAS


def _train_step(
    cfg: PolicyTrainConfig,
    step: int,
    compiled: CompiledPolicy,
    optimizer: torch.optim.Optimizer,
    charges: BandCharges,
    train: ImageSet,
    normalize: Normalizer,
) -> dict[str, float]:
    """One REINFORCE step on a fresh batch of (image, budget) pairs, then one dual step of the
    charges; returns the step's figures for the progress bar and history."""
    table = compiled.table
    device = compiled.device
    k = cfg.samples_per_image
    gen = step_generator(cfg.seed, step)
    index = torch.randint(0, len(train), (cfg.batch_size,), generator=gen)
    budgets = sample_budgets(table, cfg.batch_size, gen).repeat_interleave(k).to(device)
    x = normalize(train.images[index].to(device)).repeat_interleave(k, 0)
    y = train.labels[index].to(device).repeat_interleave(k)
    r = compiled.rollout(x, budgets, sample=True, generator=gen)
    log_p = F.log_softmax(r.logits, dim=1).gather(1, y[:, None]).squeeze(1)
    used = charges.used(budgets, r.bitops)
    reward = log_p - (charges.of(budgets) * used).float()
    loss = policy_loss(r.log_prob, r.entropy, reward, k, cfg.entropy_weight)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    charges.update(budgets, r.bitops)
    escalated = r.escalation if r.escalation is not None else torch.zeros_like(y)
    return {
        "reward": float(reward.mean()),
        "acc": float((r.logits.argmax(1) == y).float().mean()),
        "used": float(used.mean()),
        "rerun": float((escalated > 0).float().mean()),
        "charge": float(charges.values.mean()),
        "entropy": float(r.entropy.detach().mean()),
    }
