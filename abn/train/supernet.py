"""Stage 1: train every width of the supernet jointly, from one set of weights.

Each step (the "sandwich" of AdaBits/Quantizable DNNs/ABN, with the path counts of
ABN's reference code, 1hunters/retraining-free-quantization):

* the all-max-width configuration, with cross-entropy;
* the all-min-width configuration and ``num_random`` (default 3) random configurations, each
  with ``ce_weight * CE + kl_weight * KL(max-width output || this output)``: the consistency
  loss (in-place distillation towards the max-width output, which is detached as the teacher).

Random configurations are phased in (Bit-Mixer): over the first ``phase_in_epochs`` the
probability that a random path draws its widths independently per layer rises linearly from 0
to 1; otherwise it draws one random width for every layer. After training, every transitional
BN pair is calibrated (:mod:`abn.calibrate`).

All configurations of a step run in one forward call of one module, so DistributedDataParallel
sees one forward and one backward per step. Data order, augmentation and the random
configurations are drawn from generators seeded by (seed, epoch, step) alone, which makes a run
deterministic and a resumed run bit-for-bit equal to an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from abn.calibrate import calibrate_batch_norm
from abn.data import VALIDATION_SEED, ImageSet, iterate_batches, random_crop_flip
from abn.datasource import (
    DEFAULT_TEST_FRACTION,
    DEFAULT_VAL_FRACTION,
    DataSource,
    TrainingData,
    load_for_training,
)
from abn.errors import ConfigError
from abn.evaluate import static_accuracy
from abn.geometry import check_input_geometry
from abn.preprocess import InputSpec, Normalizer
from abn.quant import FULL_PRECISION
from abn.store import ModelDescription, open_model_dir, save_model_dir
from abn.supernet import DEFAULT_BIT_CANDIDATES, ResNetSpec, Supernet, architecture
from abn.train.common import (
    DistContext,
    has_checkpoint,
    load_checkpoint,
    save_checkpoint,
    setup_distributed,
    step_generator,
    teardown_distributed,
)
from abn.train.warm_start import warm_start


@dataclass
class SupernetTrainConfig:
    out: str | None = None  # default: a new directory runs/<name>-<UTC time>
    name: str | None = None  # default: the image folder's name, else fmnist-abn
    version: str = "1.0.0"
    arch: str = "resnet8_fmnist"
    channels: int | None = None  # input channels (1 or 3); default: the architecture's
    input_size: int | None = None  # input height = width in pixels; default: the architecture's
    bit_candidates: list[int] = field(default_factory=lambda: list(DEFAULT_BIT_CANDIDATES))
    data_dir: str | None = None  # Fashion-MNIST IDX directory (default: Debian's)
    image_folder: str | None = None  # root/<class>/*.jpg (or root/train|val|test/<class>/)
    val_fraction: float = DEFAULT_VAL_FRACTION  # of an image folder, per class
    test_fraction: float = DEFAULT_TEST_FRACTION
    split_seed: int = VALIDATION_SEED
    epochs: int = 10
    batch_size: int = 128  # per process
    optimizer: str = "sgd"  # sgd | adamw
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: float = 0.5
    num_random: int = 3
    phase_in_epochs: float = 1.0  # layer-wise random paths rise from 0 to all over this long
    ce_weight: float = 0.5
    kl_weight: float = 0.5
    augment: bool = True
    seed: int = 0
    device: str = "auto"
    max_steps_per_epoch: int | None = None  # for smoke tests
    fp32: bool = False  # the full-precision reference of the same architecture
    batch_norm: str = "transitional"  # ablations: per_width, shared
    shared_clipping: bool = False  # ablation: one activation clip level for all widths
    calibration_rounds: int = 10  # batches per BN pair when calibrating after training
    calibration_batch_size: int = 256
    # Fine-tuning: start from the supernet of this model directory (same architecture) instead
    # of a random initialisation; a run resuming its own checkpoint ignores it.
    init_from: str | None = None
    resume: bool = False
    checkpoints: str | None = None  # default: runs/<name>
    # After training, every rank writes rank{r}.params.sha256 (see param_digest) to the
    # checkpoint directory, so a test or an operator can check that DDP replicas agree.
    param_digest: bool = False

    @property
    def checkpoint_dir(self) -> Path:
        return Path(self.checkpoints or f"runs/{self.model_name}")

    @property
    def model_name(self) -> str:
        """The model's name: ``--name``, else the image folder's, else the shipped model's."""
        if self.name:
            return self.name
        return Path(self.image_folder).resolve().name if self.image_folder else "fmnist-abn"

    def input_geometry(self) -> tuple[int, int]:
        """(channels, size) the network takes: the architecture's unless overridden."""
        spec = architecture(self.arch)
        return self.channels or spec.in_channels, self.input_size or spec.input_size


def load_training_data(cfg: SupernetTrainConfig) -> TrainingData:
    """Train and val splits of the configured source, checked against the architecture."""
    source = DataSource.from_flags(
        cfg.data_dir,
        cfg.image_folder,
        split_seed=cfg.split_seed,
        val_fraction=cfg.val_fraction,
        test_fraction=cfg.test_fraction,
        grayscale=cfg.channels == 1,
    )
    channels, size = cfg.input_geometry()
    check_input_geometry(architecture(cfg.arch), channels, size)
    return load_for_training(source, channels, size, cfg.arch)


def default_out(name: str) -> Path:
    """A new directory under runs/ (never the shipped model): runs/<name>-<UTC time>[-n]."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    out = Path("runs") / f"{name}-{stamp}"
    n = 1
    while out.exists():
        n += 1
        out = Path("runs") / f"{name}-{stamp}-{n}"
    return out


def model_spec(cfg: SupernetTrainConfig, num_classes: int) -> ResNetSpec:
    channels, size = cfg.input_geometry()
    spec = architecture(
        cfg.arch,
        num_classes=num_classes,
        bit_candidates=list(cfg.bit_candidates),
        in_channels=channels,
        input_size=size,
    )
    if cfg.fp32:
        return spec.replace(bit_candidates=[FULL_PRECISION], fixed_bits=FULL_PRECISION)
    return spec.replace(batch_norm=cfg.batch_norm, switchable_clipping=not cfg.shared_clipping)


class JointForward(nn.Module):
    """Runs one batch at several configurations in a single forward call (one DDP step)."""

    def __init__(self, net: Supernet) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor, configs: list[list[int]]) -> list[torch.Tensor]:
        return [self.net(x, c) for c in configs]


def layerwise_probability(cfg: SupernetTrainConfig, step: int, steps_per_epoch: int) -> float:
    """Probability that a random path is drawn per layer (else one width for all) at ``step``."""
    phase = cfg.phase_in_epochs * steps_per_epoch
    return 1.0 if phase <= 0 else min(1.0, step / phase)


def step_configs(
    net: Supernet, cfg: SupernetTrainConfig, step: int, steps_per_epoch: int
) -> list[list[int]]:
    """Max, min, then ``num_random`` random configurations, seeded by the step."""
    bits = net.bit_candidates
    if len(bits) == 1:
        return [net.uniform(bits[0])]
    gen = step_generator(cfg.seed, step)
    layerwise = layerwise_probability(cfg, step, steps_per_epoch)
    configs = [net.uniform(max(bits)), net.uniform(min(bits))]
    for _ in range(cfg.num_random):
        per_layer = float(torch.rand((), generator=gen)) < layerwise
        count = net.num_switchable if per_layer else 1
        idx = torch.randint(0, len(bits), (count,), generator=gen).tolist()
        configs.append([bits[i] for i in idx] if per_layer else net.uniform(bits[idx[0]]))
    return configs


def joint_loss(
    logits: list[torch.Tensor], labels: torch.Tensor, cfg: SupernetTrainConfig
) -> tuple[torch.Tensor, dict[str, float]]:
    teacher = logits[0]
    loss = F.cross_entropy(teacher, labels)
    parts = {"ce_max": loss.item()}
    soft_teacher = F.softmax(teacher.detach(), dim=1)
    for i, student in enumerate(logits[1:]):
        ce = F.cross_entropy(student, labels)
        kl = F.kl_div(F.log_softmax(student, dim=1), soft_teacher, reduction="batchmean")
        loss = loss + cfg.ce_weight * ce + cfg.kl_weight * kl
        parts["ce_min" if i == 0 else f"ce_rand{i}"] = ce.item()
    return loss, parts


def make_optimizer(net: Supernet, cfg: SupernetTrainConfig) -> torch.optim.Optimizer:
    """Weight decay on conv/linear weights only; steps, clip levels, BN and biases are exempt."""
    decay = [p for n, p in net.named_parameters() if n.endswith(".weight") and p.dim() > 1]
    ids = {id(p) for p in decay}
    rest = [p for p in net.parameters() if id(p) not in ids]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": rest, "weight_decay": 0.0},
    ]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    raise ConfigError(f"unknown optimizer {cfg.optimizer!r}; choose sgd or adamw")


def lr_at(step: int, total: int, warmup: int, base: float) -> float:
    """Linear warm-up, then cosine decay to zero."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1.0 + math.cos(math.pi * progress))


def calibrate(
    net: Supernet, train: ImageSet, input_spec: InputSpec, cfg: SupernetTrainConfig
) -> dict:
    """Calibrate every BN pair on un-augmented training images (see :mod:`abn.calibrate`)."""
    device = next(net.parameters()).device
    started = time.time()
    normalize = Normalizer.for_spec(input_spec, device)
    batches = (
        normalize(images.to(device))
        for epoch in range(10**6)  # cycle through the data as often as the schedule needs
        for images, _ in iterate_batches(
            train, cfg.calibration_batch_size, shuffle=True, seed=cfg.seed, epoch=epoch
        )
    )
    report = calibrate_batch_norm(net, batches, cfg.calibration_rounds, seed=cfg.seed)
    report["seconds"] = round(time.time() - started, 1)
    print(json.dumps({"bn_calibration": report}), flush=True)
    return report


def param_digest(module: nn.Module) -> str:
    """sha256 over every parameter's name, shape, dtype and bytes, in registration order.

    Buffers are left out on purpose: under DDP each rank's BatchNorm running statistics see
    that rank's last batch, whereas the parameters of all replicas must be identical.
    """
    digest = hashlib.sha256()
    for name, p in module.named_parameters():
        t = p.detach().cpu().contiguous()
        digest.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def train_supernet(cfg: SupernetTrainConfig) -> Path:
    ctx = setup_distributed(cfg.device)
    try:
        return _train(cfg, ctx)
    finally:
        teardown_distributed()


@dataclass(frozen=True)
class Schedule:
    """How many steps an epoch has on each process, in all, and of learning-rate warm-up."""

    steps_per_epoch: int
    total_steps: int
    warmup_steps: int

    @classmethod
    def for_run(cls, cfg: SupernetTrainConfig, train_images: int, world_size: int) -> Schedule:
        steps = math.ceil(train_images // world_size / cfg.batch_size)
        if cfg.max_steps_per_epoch:
            steps = min(steps, cfg.max_steps_per_epoch)
        return cls(steps, steps * cfg.epochs, int(cfg.warmup_epochs * steps))


@dataclass(frozen=True)
class _Run:
    """What every epoch of one training run uses."""

    cfg: SupernetTrainConfig
    ctx: DistContext
    net: Supernet
    model: nn.Module  # the net's joint forward, under DDP when distributed
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    input_spec: InputSpec
    normalize: Normalizer  # the input spec's, on the run's device


def _train(cfg: SupernetTrainConfig, ctx: DistContext) -> Path:
    """Build, restore or warm-start, train epoch by epoch (checkpointing each), then
    calibrate and save the model directory (on the main process)."""
    torch.manual_seed(cfg.seed)
    data = load_training_data(cfg)
    train = data.splits["train"]
    net = Supernet(model_spec(cfg, len(train.classes))).to(ctx.device)
    optimizer = make_optimizer(net, cfg)
    schedule = Schedule.for_run(cfg, len(train), ctx.world_size)
    start_epoch, history = _restore(cfg, ctx, net, optimizer)
    normalizer = Normalizer.for_spec(data.input_spec, ctx.device)
    model = _joint_model(net, ctx)
    run = _Run(cfg, ctx, net, model, optimizer, schedule, data.input_spec, normalizer)
    started = time.time()
    for epoch in range(start_epoch, cfg.epochs):
        record = _train_epoch(run, train, epoch)
        if ctx.is_main:
            _end_epoch(run, data.splits["val"], record, history)
        if ctx.distributed:
            torch.distributed.barrier()
    if cfg.param_digest:
        cfg.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        path = cfg.checkpoint_dir / f"rank{ctx.rank}.params.sha256"
        path.write_text(param_digest(net) + "\n")
    out = Path(cfg.out) if cfg.out else default_out(cfg.model_name)
    if ctx.is_main:
        stage1 = {
            "config": asdict(cfg),
            "history": history,
            "wall_seconds_this_run": time.time() - started,
            "world_size": ctx.world_size,
            "device": str(ctx.device),
        }
        _save(cfg, net, data, stage1, out)
    return out


def _restore(
    cfg: SupernetTrainConfig, ctx: DistContext, net: Supernet, optimizer: torch.optim.Optimizer
) -> tuple[int, list[dict]]:
    """Resume this run's checkpoint (``--resume``), else start from another model's supernet
    (``--init-from``), else from scratch; the epoch to start at and the history so far."""
    if cfg.resume and has_checkpoint(cfg.checkpoint_dir):
        meta = load_checkpoint(cfg.checkpoint_dir, net, optimizer, ctx.device)
        if ctx.is_main:
            print(f"resumed from {cfg.checkpoint_dir} after epoch {meta['epoch']}", flush=True)
        return meta["epoch"], meta["history"]
    if cfg.init_from:
        warm_start(open_model_dir(cfg.init_from).load_supernet(ctx.device), net)
        if ctx.is_main:
            print(f"initialised from the supernet of {cfg.init_from}", flush=True)
    return 0, []


def _joint_model(net: Supernet, ctx: DistContext) -> nn.Module:
    """Every configuration of a step in one forward call; under DDP when distributed."""
    model: nn.Module = JointForward(net)
    if not ctx.distributed:
        return model
    return DistributedDataParallel(
        model,
        device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None,
        find_unused_parameters=True,  # widths a step did not use get no gradient
    )


def augmentation_generator(seed: int, epoch: int, rank: int) -> torch.Generator:
    """The crops and flips of one epoch on one process, seeded by (seed, epoch, rank) alone."""
    return torch.Generator().manual_seed(seed * 7919 + epoch * 31 + rank)


def _train_epoch(run: _Run, train: ImageSet, epoch: int) -> dict:
    """One epoch of joint steps; its record (mean loss, seconds) for the history."""
    cfg, ctx, schedule, optimizer = run.cfg, run.ctx, run.schedule, run.optimizer
    run.net.train()
    aug = augmentation_generator(cfg.seed, epoch, ctx.rank)
    batches = iterate_batches(
        train,
        cfg.batch_size,
        shuffle=True,
        seed=cfg.seed,
        epoch=epoch,
        rank=ctx.rank,
        world_size=ctx.world_size,
    )
    bar = tqdm(
        total=schedule.steps_per_epoch,
        desc=f"epoch {epoch + 1}/{cfg.epochs}",
        disable=not ctx.is_main,
        mininterval=2.0,
        dynamic_ncols=True,
    )
    seen, t0, loss_sum = 0, time.time(), 0.0
    for i, (images, labels) in enumerate(batches):
        if i >= schedule.steps_per_epoch:
            break
        step = epoch * schedule.steps_per_epoch + i
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, schedule.total_steps, schedule.warmup_steps, cfg.lr)
        if cfg.augment:
            images = random_crop_flip(images, aug)
        x = run.normalize(images.to(ctx.device))
        logits = run.model(x, step_configs(run.net, cfg, step, schedule.steps_per_epoch))
        loss, parts = joint_loss(logits, labels.to(ctx.device), cfg)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seen += images.shape[0] * ctx.world_size
        loss_sum += loss.item()
        bar.set_postfix(
            loss=f"{loss.item():.3f}",
            ce_min=f"{parts.get('ce_min', 0):.3f}",
            img_s=f"{seen / (time.time() - t0):.0f}",
        )
        bar.update(1)
    bar.close()
    return {
        "epoch": epoch + 1,
        "train_loss": loss_sum / max(1, schedule.steps_per_epoch),
        "seconds": time.time() - t0,
    }


def _end_epoch(run: _Run, val: ImageSet, record: dict, history: list[dict]) -> None:
    """On the main process: the widest and narrowest widths' validation accuracy into the
    epoch's record, the record into the history, and a checkpoint."""
    net = run.net
    for bits in (max(net.bit_candidates), min(net.bit_candidates)):
        record[f"val_acc_{bits}bit"] = static_accuracy(net, val, run.input_spec, net.uniform(bits))
    print(json.dumps(record), flush=True)
    history.append(record)
    meta = {"epoch": record["epoch"], "history": history, "config": asdict(run.cfg)}
    save_checkpoint(run.cfg.checkpoint_dir, net, run.optimizer, meta)


def _save(
    cfg: SupernetTrainConfig, net: Supernet, data: TrainingData, stage1: dict, out: Path
) -> None:
    """Calibrate every BN pair, then write the model directory with how it was trained."""
    train = data.splits["train"]
    stage1["bn_calibration"] = calibrate(net, train, data.input_spec, cfg)
    card = ModelDescription(
        name=cfg.model_name,
        version=cfg.version,
        classes=list(train.classes),
        input_spec=data.input_spec,
        training={"stage1": stage1},
        data=data.record,
    )
    save_model_dir(out, net.cpu().eval(), card)
    print(f"saved model directory {out}; next: abn train policy --model {out}", flush=True)
