"""The library's commands: ``train supernet``, ``train policy``, ``evaluate``.

The ``abn`` console script (``commands/abn.py``) adds ``serve`` on top; ``python -m abn.cli``
runs these alone (as ``torchrun`` does for distributed training). A mistake a user can fix (a
missing folder, data that does not fit the model, an option out of range) ends in one line on
stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import types
import typing
from collections.abc import Sequence
from pathlib import Path

from abn.datasource import DEFAULT_TEST_FRACTION, DEFAULT_VAL_FRACTION
from abn.errors import ABNError
from abn.geometry import architectures_help
from abn.store import DEFAULT_MODEL_DIR
from abn.supernet import ARCHITECTURES

__all__ = ["DEFAULT_MODEL_DIR", "add_library_commands", "build_parser", "main", "run"]

USAGE_ERROR = 2  # argparse's own exit status for a bad command line

DATA_HELP = {
    "data_dir": "Fashion-MNIST IDX directory (default for stage 1: Debian's "
    "/usr/share/datasets/fashion-mnist, or ABN_FASHION_MNIST_DIR)",
    "image_folder": "train on your own images: DIR/<class>/*.jpg (one sub-folder per class, "
    "sorted names are the labels), or DIR/train|val|test/<class>/ where you made the split; "
    "see docs/own-data.md",
}
MODEL_DATA_HELP = {
    "data_dir": "use Fashion-MNIST from this IDX directory instead of the data the model "
    "records (its manifest's 'data'); it must fit the model's classes and input",
    "image_folder": "use this image folder instead of the data the model records, split by "
    "the model's recorded seed and fractions; its classes must be the model's",
}
SUPERNET_HELP = {
    **DATA_HELP,
    "out": "model directory to write (default: a new runs/<name>-<UTC time>); a policy "
    "already there is removed unless the supernet is unchanged",
    "name": "model name (manifest, /v1/model, metrics) and of the default --out and "
    "--checkpoints (default: the image folder's name, else fmnist-abn)",
    "version": "model version string (manifest, /v1/model)",
    "arch": f"network; each expects an input: {architectures_help()}",
    "channels": "input channels, 1 (grayscale) or 3 (RGB) (default: the architecture's); "
    "colour images into 1 channel only when given as --channels 1",
    "input_size": "input height = width in pixels; images are padded to square and resized "
    "(default: the architecture's)",
    "bit_candidates": "bit-widths every switchable layer can run at",
    "val_fraction": f"image folder: share of each class held out for validation (default "
    f"{DEFAULT_VAL_FRACTION}; ignored where DIR/val/ exists)",
    "test_fraction": f"image folder: share of each class held out for the test set (default "
    f"{DEFAULT_TEST_FRACTION}; ignored where DIR/test/ exists)",
    "split_seed": "image folder: seed of the per-class split (recorded; later stages reuse it)",
    "epochs": "passes over the training split",
    "batch_size": "images per step and process",
    "optimizer": "optimizer",
    "lr": "peak learning rate (after warm-up; cosine decay to zero)",
    "momentum": "SGD momentum (Nesterov)",
    "weight_decay": "weight decay of conv and linear weights (not steps, clip levels, BN)",
    "warmup_epochs": "linear learning-rate warm-up, in epochs",
    "num_random": "random configurations per step besides all-max and all-min",
    "phase_in_epochs": "epochs over which random paths go from one width for all layers to "
    "a width per layer",
    "ce_weight": "weight of cross-entropy for the non-max configurations",
    "kl_weight": "weight of the KL term towards the all-max output (consistency)",
    "augment": "random shifts and horizontal flips of training images",
    "seed": "seed of initialisation, data order, augmentation and random paths",
    "device": "auto (CUDA when there is one), cpu, cuda or cuda:N",
    "max_steps_per_epoch": "cap steps per epoch (smoke tests)",
    "fp32": "train the full-precision reference of the architecture instead",
    "batch_norm": "BatchNorm per (input width, width) pair, per width, or shared (ablations)",
    "shared_clipping": "one activation clip level for every width (ablation)",
    "calibration_rounds": "batches per BatchNorm pair when calibrating after training",
    "calibration_batch_size": "images per calibration batch",
    "init_from": "start from the supernet of this model directory (same architecture)",
    "resume": "continue from the checkpoint in --checkpoints (same architecture and data)",
    "checkpoints": "checkpoint directory (default: runs/<name>)",
    "param_digest": "write each rank's parameter sha256 to the checkpoint directory (DDP tests)",
}
POLICY_HELP = {
    **MODEL_DATA_HELP,
    "model": "model directory from stage 1; the policy is written into it",
    "steps": "policy-gradient steps",
    "batch_size": "images per step (each rolled out --samples-per-image times)",
    "samples_per_image": "sampled width sequences per image and budget (leave-one-out baseline)",
    "lr": "Adam learning rate of the policy",
    "hidden": "width of the policy's hidden layer",
    "granularity": "where the policy decides: per layer, per residual block, or once per image",
    "bitops_charge": "starting reward charge per unit of BitOps spent (relative to the dearest)",
    "spend_target": "per budget band, the share of what the budget allows above the cheapest "
    "configuration that the charges steer spending to",
    "charge_lr": "dual-ascent step of the per-band charges",
    "escalate": "let the policy stop or re-run from a block boundary as its last decision",
    "entropy_weight": "entropy bonus of the policy loss",
    "seed": "seed of images, budgets and sampled widths",
    "device": "auto (CUDA when there is one), cpu, cuda or cuda:N",
    "checkpoint_every": "steps between checkpoints",
    "checkpoints": "checkpoint directory (default: runs/<model name>-policy)",
    "resume": "continue from the checkpoint in --checkpoints (same policy shape)",
    "init_from": "a model directory whose policy's width decisions start this one",
}
CHOICES = {
    "arch": tuple(ARCHITECTURES),
    "channels": (1, 3),
    "optimizer": ("sgd", "adamw"),
    "batch_norm": ("transitional", "per_width", "shared"),
    "granularity": ("layer", "block", "network"),
}


def _add_dataclass_options(
    parser: argparse.ArgumentParser, cls: type, help_texts: dict[str, str]
) -> None:
    """One ``--option`` per field of a training config, typed and defaulted from the field; a
    field without a default is a required option."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        options: dict[str, typing.Any] = {"help": help_texts.get(f.name)}
        if f.default is not dataclasses.MISSING:
            options["default"] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            options["default"] = f.default_factory()
        else:
            options["required"] = True
        kind = hints[f.name]
        shown = options.get("default")
        if (
            options["help"]
            and shown is not None
            and kind is not bool
            and "(default" not in options["help"]
        ):
            shown = " ".join(map(str, shown)) if isinstance(shown, list) else shown
            options["help"] += f" (default: {shown})"
        if f.name in CHOICES:
            options["choices"] = CHOICES[f.name]
        if isinstance(kind, types.UnionType):
            kind = next(a for a in typing.get_args(kind) if a is not type(None))
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **options)
        elif typing.get_origin(kind) is list:
            parser.add_argument(flag, type=typing.get_args(kind)[0], nargs="+", **options)
        else:
            parser.add_argument(flag, type=kind, **options)


def _config_from(cls: type, args: argparse.Namespace) -> object:
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})


def add_library_commands(sub: argparse._SubParsersAction) -> None:
    """Add ``train`` and ``evaluate`` to a parser's sub-commands."""
    from abn.train.policy import PolicyTrainConfig
    from abn.train.supernet import SupernetTrainConfig

    train = sub.add_parser("train", help="train a stage").add_subparsers(
        dest="stage", required=True
    )
    supernet = train.add_parser(
        "supernet",
        help="stage 1: the supernet",
        description="Stage 1: train every bit-width of the supernet jointly, on Fashion-MNIST "
        "or on your own --image-folder; writes a model directory.",
    )
    _add_dataclass_options(supernet, SupernetTrainConfig, SUPERNET_HELP)
    policy = train.add_parser(
        "policy",
        help="stage 2: the per-image policy",
        description="Stage 2: train the per-image width policy on the frozen supernet of "
        "--model, on the data the model records.",
    )
    _add_dataclass_options(policy, PolicyTrainConfig, POLICY_HELP)
    add_evaluate_command(sub)


def add_evaluate_command(sub: argparse._SubParsersAction) -> None:
    evaluate = sub.add_parser(
        "evaluate",
        help="accuracy/BitOps tables and plots",
        description="Accuracy and BitOps tables, latency per width, and plots on the test split "
        "of the data the model records; by default also written into its manifest.",
    )
    evaluate.add_argument("--model", type=Path, required=True, help="model directory")
    evaluate.add_argument(
        "--out",
        type=Path,
        default=None,
        help="where report.json, report.md and pareto.png go (default: MODEL/evaluation)",
    )
    evaluate.add_argument("--data-dir", default=None, help=MODEL_DATA_HELP["data_dir"])
    evaluate.add_argument("--image-folder", default=None, help=MODEL_DATA_HELP["image_folder"])
    evaluate.add_argument(
        "--random-configs",
        type=int,
        default=100,
        help="random per-layer configurations scored (default: 100)",
    )
    evaluate.add_argument(
        "--budgets",
        type=int,
        default=10,
        help="budgets the policy is scored at, geometric from cheapest to dearest (default: 10)",
    )
    evaluate.add_argument(
        "--search",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="search the best static mixed configurations on validation",
    )
    evaluate.add_argument(
        "--update-manifest",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="write the accuracy and latency tables into the manifest (served by /v1/model)",
    )
    evaluate.add_argument(
        "--device",
        default="cpu",
        help="where to run and time the model: the serving device (default: cpu)",
    )
    evaluate.add_argument(
        "--latency",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="time every uniform width on --device (the model card's latency table)",
    )
    evaluate.add_argument(
        "--latency-batch-size", type=int, default=32, help="images per timed batch (default: 32)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="abn", description=__doc__)
    add_library_commands(parser.add_subparsers(dest="command", required=True))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """Run a parsed ``train`` or ``evaluate`` command; a user's mistake is one line, exit 2."""
    name = " ".join(filter(None, ["abn", args.command, getattr(args, "stage", None)]))
    try:
        _run(args)
    except (ABNError, OSError) as err:
        print(f"{name}: error: {err}", file=sys.stderr)
        return USAGE_ERROR
    return 0


def _run(args: argparse.Namespace) -> None:
    if args.command == "train" and args.stage == "supernet":
        from abn.train.supernet import SupernetTrainConfig, train_supernet

        train_supernet(_config_from(SupernetTrainConfig, args))
    elif args.command == "train" and args.stage == "policy":
        from abn.train.policy import PolicyTrainConfig, train_policy

        train_policy(_config_from(PolicyTrainConfig, args))
    elif args.command == "evaluate":
        from abn.evaluate import EvaluateOptions, evaluate_model

        evaluate_model(EvaluateOptions(**{k: v for k, v in vars(args).items() if k != "command"}))
    else:
        raise ValueError(f"not a library command: {args.command}")


if __name__ == "__main__":
    sys.exit(main())
