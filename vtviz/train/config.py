"""``vtviz train``'s configuration: :class:`TrainConfig`, its options, and recipe files.

A recipe (``recipes/*.json``) holds a shipped model's command as data: ``base`` fields, and
``runs`` that override them (one per training of its lineage); ``vtviz train --recipe FILE
--run NAME`` runs one, and command-line options override it again.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any


def parse_schedule(text: str) -> list[int]:
    """``"128:14,224:2"`` -> input size per epoch ``[128]*14 + [224]*2``."""
    sizes: list[int] = []
    for part in text.split(","):
        size, _, epochs = part.strip().partition(":")
        sizes += [int(size)] * int(epochs or 1)
    if not sizes:
        raise ValueError(f"empty schedule {text!r}")
    return sizes


@dataclass(frozen=True)
class TrainConfig:
    """A training job, typed; ``vtviz train``'s options map onto it one to one
    (:meth:`from_namespace`). See :func:`add_arguments` for each field's meaning."""

    data: str
    out: str
    name: str = "model"
    description: str = ""
    arch: str = "vt_resnet18"
    tokenizers: str | None = None
    tokens: int = 16
    init: str | None = None
    padding: str = "reflect"
    schedule: str = "128:56,160:4"
    eval_size: int | None = None
    cache_size: int | None = None
    batch_size: int = 64
    lr: float = 1.5e-3
    weight_decay: float = 0.05
    warmup_epochs: int = 2
    label_smoothing: float = 0.1
    min_scale: float = 0.35
    clip: float = 2.0
    diversity: float = 0.5
    balance: float = 0.0
    hard_balance: float = 0.0
    mixing_diversity: float = 0.0
    register_cap: float = 0.0
    projector_balance: float = 0.0
    self_cap: float = 0.0
    border: float = 0.0
    border_min_size: int = 0
    registers: int | None = None
    projector_null: bool | None = None
    static_filter: bool | None = None
    precise_bn: int = 0
    dev_fraction: float = 0.0
    dev_seed: int | None = None
    dev_sizes: tuple[int, ...] | None = None
    no_val: bool = False
    teacher: str | None = None
    kd_weight: float = 0.7
    kd_temperature: float = 2.0
    kd_consistent: bool = False
    mixup: float = 0.0
    amp: bool = True
    half: bool = False
    seed: int = 0
    device: str = "auto"
    threads: int = 0
    cache_dir: str | None = "~/.cache/vtviz"  # None: no cache
    eval_every: int = 0
    save_every: int = 1
    resume: bool = True
    stop_after: int = 0
    quiet: bool = False

    @classmethod
    def from_namespace(cls, ns: argparse.Namespace) -> TrainConfig:
        """The config of parsed ``vtviz train`` arguments: the recipe's run (``--recipe``,
        ``--run``), then every option given on the command line."""
        values = read_recipe(ns.recipe, ns.run) if getattr(ns, "recipe", None) else {}
        unknown = set(values) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"{ns.recipe}: unknown recipe keys {sorted(unknown)}")
        values.update({f.name: getattr(ns, f.name) for f in fields(cls) if hasattr(ns, f.name)})
        missing = [k for k in ("data", "out") if not values.get(k)]
        if missing:
            raise ValueError(f"--{missing[0]} is required (on the command line or in the recipe)")
        if values.get("dev_sizes") is not None:
            values["dev_sizes"] = tuple(values["dev_sizes"])
        return cls(**values)

    def check(self) -> None:
        """Raise ``ValueError`` on options that contradict each other (before any work)."""
        if self.mixup < 0:
            raise ValueError(f"--mixup {self.mixup}: alpha must be positive (0 = off)")
        if self.mixup and self.teacher and not self.kd_consistent:
            raise ValueError("--mixup with a --teacher needs --kd-consistent: cached whole-photo "
                             "logits do not describe a mixed crop")

    def regulariser_weights(self, size: int) -> dict[str, float]:
        """The weight of each regulariser (:data:`vtviz.train.regularisers.REGULARISERS`) for
        crops of ``size`` px (:func:`border_weight`)."""
        return {"diversity": self.diversity, "balance": self.balance, "hard_balance": self.hard_balance,
                "mixing_diversity": self.mixing_diversity, "register_cap": self.register_cap,
                "projector_balance": self.projector_balance, "self_cap": self.self_cap,
                "border": border_weight(self, size)}

    @property
    def split_seed(self) -> int:
        """The dev split's seed: ``dev_seed``, else the training ``seed``."""
        return self.seed if self.dev_seed is None else self.dev_seed

    def recipe(self) -> dict[str, Any]:
        """What the summary records of the recipe (no paths; no architecture under ``init``)."""
        skip = {"data", "out", "cache_dir", "quiet", "resume", "save_every", "init"}
        if self.init:
            skip |= {"arch", "tokenizers", "tokens", "padding"}
        return {k: v for k, v in asdict(self).items() if k not in skip}


#: Help of each ``vtviz train`` option (the field of :class:`TrainConfig` of the same name).
OPTION_HELP: dict[str, str] = {
    "data": "ImageFolder root with train/ and val/",
    "out": "output folder (checkpoint, last.pt)",
    "name": "checkpoint name (NAME.safetensors)",
    "description": "one line for `vtviz info` (default: architecture, tokenizers, data, parent)",
    "arch": "architecture of a fresh model",
    "tokenizers": "e.g. filter,recurrent (default: the arch's)",
    "tokens": "visual tokens per module",
    "init": "fine-tune this checkpoint (its architecture; --arch/--tokenizers ignored)",
    "padding": "convolution padding of the backbone",
    "schedule": "SIZE:EPOCHS,... per phase",
    "eval_size": "evaluation input size (default: the schedule's last size)",
    "cache_size": "size the training images are decoded at, random crops come from it "
                  "(default: the largest of the schedule's sizes and --eval-size)",
    "min_scale": "random-resized-crop min area",
    "clip": "gradient-norm clipping",
    "diversity": "token-map diversity penalty weight",
    "balance": "load-balancing penalty on received attention and projector ownership",
    "hard_balance": "load-balancing penalty on argmax ownership (Switch Transformer's loss) of the token "
                    "mixing and the projector",
    "mixing_diversity": "penalty on similar rows of the token mixing (tokens reading the same others)",
    "register_cap": "penalty on attention to the register tokens beyond half of a token's",
    "projector_balance": "argmax load balancing of the projector alone (tokens owning pixels)",
    "self_cap": "penalty on the attention tokens give themselves in the mixing beyond half",
    "border": "penalty on attention on the map's border",
    "border_min_size": "apply the border penalty only to phases of at least this input size (px)",
    "registers": "register tokens per transformer",
    "projector_null": "a null slot in the projector's softmax",
    "static_filter": "the recurrent tokenizer's per-token filter W_0 (--no-static-filter: the paper's "
                     "tokenizer, filters from the previous tokens alone)",
    "precise_bn": "at the end, recompute BatchNorm statistics on this many training photos",
    "dev_fraction": "hold out this share of train/ (per class, by --dev-seed) as a dev split",
    "dev_seed": "seed of the dev split (default: --seed); fix it to compare training seeds on the same dev photos",
    "dev_sizes": "evaluate the dev split at these sizes (e.g. 224,256,288) and keep the best as input size",
    "no_val": "do not read val/ (measure it once, later)",
    "teacher": "distil from this ImageNet network",
    "kd_consistent": "run the teacher on each augmented crop (instead of cached whole-photo logits)",
    "mixup": "mixup of the crops with lam ~ Beta(ALPHA, ALPHA); with a teacher it needs --kd-consistent, "
             "so that the teacher labels the mixed crop (function matching)",
    "amp": "mixed precision where the hardware has it",
    "half": "store the checkpoint in float16",
    "threads": "torch CPU threads (0 = default)",
    "cache_dir": "where decoded images and teacher logits are cached",
    "eval_every": "evaluate every N epochs (0: last only)",
    "save_every": "write the resumable last.pt every N epochs (and always at the end)",
    "resume": "continue from OUT/last.pt when it exists",
    "stop_after": "stop after N epochs in this run (resume later); 0 = run to the end",
}
_CHOICES = {"arch": ["vt_resnet18", "vt_resnet34", "resnet18"], "padding": ["reflect", "zeros"],
            "teacher": ["efficientnet-lite0"]}


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(","))


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``vtviz train`` options: ``--recipe``/``--run``, then one per :class:`TrainConfig`
    field. Options not given stay unset (the recipe's or the config's default applies)."""
    p.add_argument("--recipe", default=None, help="recipe file (JSON): a shipped model's command as data")
    p.add_argument("--run", default=None, help="which of the recipe's runs")
    for f in fields(TrainConfig):
        kind = str(f.type)
        kw: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "choices": _CHOICES.get(f.name)}
        if kind == "bool" and not f.default:
            kw["action"] = "store_true"
            kw.pop("choices")
        elif kind.startswith("bool"):
            kw["action"] = argparse.BooleanOptionalAction
            kw.pop("choices")
        else:
            kw["type"] = _ints if kind.startswith("tuple") else int if kind.startswith("int") else \
                float if kind.startswith("float") else str
        shown = "" if f.default in (None, "", False) or isinstance(f.default, type(dataclasses.MISSING)) else \
            f" (default: {f.default})"
        p.add_argument(f"--{f.name.replace('_', '-')}", help=OPTION_HELP.get(f.name, "") + shown, **kw)


def border_weight(cfg: TrainConfig, size: int) -> float:
    """The border penalty's weight for crops of ``size`` px: 0 below ``cfg.border_min_size``.

    On small inputs the outer ring is much of the map (at 128 px, 28 of 8x8 cells: a uniform map
    already has 44% there), and the penalty kept every token map diffuse in a from-scratch trial
    (docs/model-history.md)."""
    return cfg.border if size >= cfg.border_min_size else 0.0


#: Keys of a recipe file that document it rather than configure a run.
RECIPE_NOTES = ("command", "model", "about", "then")


def read_recipe(path: str | Path, run: str | None = None) -> dict[str, Any]:
    """A recipe's fields for one run: ``base`` updated by ``runs[run]`` (a flat file: as it is)."""
    values = json.loads(Path(path).read_text())
    if "runs" not in values:
        if run:
            raise ValueError(f"{path}: has no runs (asked for {run!r})")
        return {k: v for k, v in values.items() if k not in RECIPE_NOTES}
    runs = values["runs"]
    if run not in runs:
        raise ValueError(f"{path}: choose a run with --run: {', '.join(runs)}")
    return {**values.get("base", {}), **runs[run]}

