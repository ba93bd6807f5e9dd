"""A run's frozen configuration: what to train, on which data, with which schedule.

`RunConfig` is the run spec of docs/interfaces.md: the experiment harness builds one, the executor
hands it to `scnet.engine.run_training`, and it is written beside the run as `config.json`. Its
`run_id()` hashes the *resolved* model config (so two spellings of the same network are one run)
together with everything that changes the numbers; knobs that only change speed (`num_workers`)
are left out of the identity.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Mapping

from scnet.config import ConfigError

SCALES = ("smoke", "paper")
SCHEDULE_NAMES = ("20e", "1x", "smoke")


def _check_keys(cls: type, values: Mapping[str, Any], where: str) -> None:
    if not isinstance(values, Mapping):
        raise ConfigError(f"{where}: expected a JSON object, found {type(values).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {unknown}; known fields: {sorted(known)}")


def _tuple(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_tuple(v) for v in value)
    return value


@dataclass(frozen=True)
class Schedule:
    """SGD with linear warm-up and step decay, counted in epochs or in iterations.

    `lr_steps` are in the same unit as the length (`epochs` or `max_iters`): the learning rate is
    divided by 10 at each. `batch_size` is the global batch over all processes.
    """

    name: str = "custom"
    epochs: int | None = None
    max_iters: int | None = None
    lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 1e-4
    batch_size: int = 16
    warmup_iters: int = 500
    warmup_ratio: float = 0.001
    lr_steps: tuple[int, ...] = ()
    checkpoint_every: int = 2000
    log_every: int = 20
    grad_clip_norm: float | None = None  # max global gradient norm; None: no clipping (the paper's setting)

    def __post_init__(self) -> None:
        if (self.epochs is None) == (self.max_iters is None):
            raise ConfigError(f"schedule {self.name!r}: set exactly one of 'epochs' and 'max_iters' "
                              f"(found epochs={self.epochs}, max_iters={self.max_iters})")
        length = self.epochs if self.epochs is not None else self.max_iters
        if length < 1:
            raise ConfigError(f"schedule {self.name!r}: length must be >= 1, found {length}")
        if self.batch_size < 1:
            raise ConfigError(f"schedule {self.name!r}: 'batch_size' must be >= 1, found {self.batch_size}")
        if self.lr <= 0:
            raise ConfigError(f"schedule {self.name!r}: 'lr' must be > 0, found {self.lr}")
        if not 0 < self.warmup_ratio <= 1 or self.warmup_iters < 0:
            raise ConfigError(f"schedule {self.name!r}: need warmup_iters >= 0 and 0 < warmup_ratio <= 1")
        if list(self.lr_steps) != sorted(self.lr_steps):
            raise ConfigError(f"schedule {self.name!r}: 'lr_steps' must be increasing, found {self.lr_steps}")
        if self.grad_clip_norm is not None and self.grad_clip_norm <= 0:
            raise ConfigError(f"schedule {self.name!r}: 'grad_clip_norm' must be > 0 or null, "
                              f"found {self.grad_clip_norm}")
        if self.checkpoint_every < 1 or self.log_every < 1:
            raise ConfigError(f"schedule {self.name!r}: 'checkpoint_every' and 'log_every' must be >= 1")

    @property
    def unit(self) -> str:
        return "epoch" if self.epochs is not None else "iter"

    def total_iters(self, iters_per_epoch: int) -> int:
        return self.epochs * iters_per_epoch if self.epochs is not None else int(self.max_iters)

    def step_iters(self, iters_per_epoch: int) -> tuple[int, ...]:
        """The iterations (0-based, first one with the lower lr) at which lr is divided by 10."""
        if self.epochs is not None:
            return tuple(int(s) * iters_per_epoch for s in self.lr_steps)
        return tuple(int(s) for s in self.lr_steps)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "Schedule":
        _check_keys(cls, values, "schedule")
        return cls(**{k: _tuple(v) for k, v in values.items()})

    def replace(self, **changes: Any) -> "Schedule":
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class EvalConfig:
    """How the trained model is evaluated with pycocotools.

    `split` is the dataset split evaluated ("val"; the overfitting test uses "train").
    `max_images` limits the number of images (None: all). `speed_warmup` images are run before the
    inference-speed clock starts.
    """

    split: str = "val"
    batch_size: int = 1
    max_images: int | None = None
    speed_warmup: int = 5
    enabled: bool = True

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"eval: 'batch_size' must be >= 1, found {self.batch_size}")
        if self.max_images is not None and self.max_images < 1:
            raise ConfigError(f"eval: 'max_images' must be >= 1 or null, found {self.max_images}")
        if self.speed_warmup < 0:
            raise ConfigError(f"eval: 'speed_warmup' must be >= 0, found {self.speed_warmup}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "EvalConfig":
        _check_keys(cls, values, "eval")
        return cls(**dict(values))


def default_schedule(scale: str, name: str) -> Schedule:
    """The paper's schedules ("20e", "1x") at paper scale, and short ones of the same shape for smoke runs.

    At smoke scale "20e" and "1x" keep the paper's decay points as fractions of the run (16/20 and
    19/20; 8/12 and 11/12) over a few hundred iterations; "smoke" is an alias of the smoke "20e".
    """
    if scale not in SCALES:
        raise ConfigError(f"scale={scale!r} is not one of {SCALES}")
    if name not in SCHEDULE_NAMES:
        raise ConfigError(f"schedule {name!r} is not one of {SCHEDULE_NAMES}")
    if scale == "paper":
        if name == "20e":
            return Schedule(name="20e", epochs=20, lr=0.02, batch_size=16, warmup_iters=500,
                            warmup_ratio=0.001, lr_steps=(16, 19), checkpoint_every=2000)
        if name == "1x":
            return Schedule(name="1x", epochs=12, lr=0.02, batch_size=16, warmup_iters=500,
                            warmup_ratio=0.001, lr_steps=(8, 11), checkpoint_every=2000)
        raise ConfigError("schedule 'smoke' exists only at scale 'smoke'; use '20e' or '1x' at paper scale")
    # Smoke runs start from random weights on 2 CPU cores: small batches, a moderate learning rate and
    # gradient clipping keep every variant (SCNet's 1.75x mask and 3x context losses included) stable.
    if name == "1x":
        return Schedule(name="1x", max_iters=144, lr=0.01, batch_size=2, warmup_iters=20,
                        warmup_ratio=0.001, lr_steps=(96, 132), checkpoint_every=50, log_every=10,
                        grad_clip_norm=10.0)
    return Schedule(name=name, max_iters=160, lr=0.01, batch_size=2, warmup_iters=20,
                    warmup_ratio=0.001, lr_steps=(128, 152), checkpoint_every=50, log_every=10,
                    grad_clip_norm=10.0)


def default_image_scale(scale: str) -> tuple[int, int]:
    """(long, short) edge limits: MMDetection's 1333x800 for COCO, small images for synthetic data."""
    if scale not in SCALES:
        raise ConfigError(f"scale={scale!r} is not one of {SCALES}")
    return (1333, 800) if scale == "paper" else (256, 192)


# Fields that change speed, logging or labels but not results; left out of `run_id`.
_NOT_IDENTITY = ("num_workers",)
_SCHEDULE_NOT_IDENTITY = ("name", "checkpoint_every", "log_every")


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines one training + evaluation run."""

    preset: str
    data_root: str
    scale: str = "smoke"
    model_flags: Mapping[str, Any] = field(default_factory=dict)
    seed: int = 0
    image_scale: tuple[int, int] | None = None  # (long, short); None: default_image_scale(scale)
    schedule: Schedule | None = None  # None: "smoke" at smoke scale, the paper's "20e" at paper scale
    num_workers: int = 2
    # fp32 unless asked: the paper and MMDetection's configs train in float32. Mixed precision (CUDA only;
    # CPU runs are always fp32) is an opt-in speed-up that changes the numbers, hence part of the run id.
    amp: bool = False
    eval: EvalConfig = field(default_factory=EvalConfig)
    # ImageNet file for the backbone trunk. None: the published file MMDetection uses, from torch's hub
    # cache, at paper scale; random initialisation at smoke scale (scnet.weights.backbone_init).
    backbone_weights: str | None = None
    # SHA-256 of `backbone_weights`, filled in when the config is made: the run's identity holds the
    # file's content, not its path, and training refuses a file that changed since.
    backbone_weights_sha256: str | None = None
    # Classes of the semantic head (semantic models), fixed from the training data when the run is made
    # (scnet.engine.semantic_classes); None: taken from the training split (older configs).
    num_semantic_classes: int | None = None

    def __post_init__(self) -> None:
        if self.scale not in SCALES:
            raise ConfigError(f"run config: 'scale' is {self.scale!r}; use one of {SCALES}")
        if self.image_scale is None:
            object.__setattr__(self, "image_scale", default_image_scale(self.scale))
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ConfigError(f"run config: 'seed' must be an integer, found {self.seed!r}")
        if (len(self.image_scale) != 2 or min(self.image_scale) < 1
                or self.image_scale[0] < self.image_scale[1]):
            raise ConfigError(f"run config: 'image_scale' must be (long, short) positive edges with "
                              f"long >= short, e.g. (1333, 800); found {self.image_scale}")
        if self.num_workers < 0:
            raise ConfigError(f"run config: 'num_workers' must be >= 0, found {self.num_workers}")
        object.__setattr__(self, "model_flags", dict(self.model_flags))
        object.__setattr__(self, "image_scale", tuple(int(v) for v in self.image_scale))
        if self.schedule is None:
            object.__setattr__(self, "schedule", default_schedule(self.scale, "smoke" if self.scale == "smoke" else "20e"))
        if isinstance(self.schedule, Mapping):
            object.__setattr__(self, "schedule", Schedule.from_dict(self.schedule))
        if isinstance(self.eval, Mapping):
            object.__setattr__(self, "eval", EvalConfig.from_dict(self.eval))
        self._resolve_backbone_weights()
        if self.num_semantic_classes is not None:
            if (not isinstance(self.num_semantic_classes, int) or isinstance(self.num_semantic_classes, bool)
                    or self.num_semantic_classes < 2):
                raise ConfigError(f"run config: 'num_semantic_classes' must be an integer >= 2 or null, "
                                  f"found {self.num_semantic_classes!r}")
            flagged = self.model_flags.get("num_semantic_classes")
            if flagged is not None and flagged != self.num_semantic_classes:
                raise ConfigError(f"run config: 'num_semantic_classes' is {self.num_semantic_classes} but "
                                  f"model_flags say {flagged}; give it once")
        # Fail now, naming the flag, rather than in a worker process an hour later.
        self.model_config()

    def _resolve_backbone_weights(self) -> None:
        """An absolute path and its SHA-256 (read once, when the run is configured)."""
        if self.backbone_weights is None:
            if self.backbone_weights_sha256 is not None:
                raise ConfigError("run config: 'backbone_weights_sha256' without 'backbone_weights'")
            return
        from pathlib import Path

        from scnet.weights.digest import file_sha256

        path = Path(self.backbone_weights).expanduser().absolute()
        object.__setattr__(self, "backbone_weights", str(path))
        if self.backbone_weights_sha256 is None:
            if not path.is_file():
                raise ConfigError(f"run config: 'backbone_weights' {path}: no such file")
            object.__setattr__(self, "backbone_weights_sha256", file_sha256(path))

    def __hash__(self) -> int:
        return hash(self.run_id())

    def model_config(self, **data_flags: Any):
        """The resolved ModelConfig; `data_flags` (num_classes...) come from the dataset unless overridden."""
        from scnet.presets import resolve_config

        fixed = {} if self.num_semantic_classes is None else {"num_semantic_classes": self.num_semantic_classes}
        flags = {**data_flags, **fixed, **self.model_flags}
        return resolve_config(self.preset, **flags)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["model_flags"] = dict(self.model_flags)
        out["image_scale"] = list(self.image_scale)
        return json.loads(json.dumps(out))  # tuples -> lists: the form config.json holds

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "RunConfig":
        _check_keys(cls, values, "run config")
        values = dict(values)
        for required in ("preset", "data_root"):
            if required not in values:
                raise ConfigError(f"run config: missing field {required!r}")
        if "schedule" in values:
            values["schedule"] = Schedule.from_dict(values["schedule"])
        if "eval" in values:
            values["eval"] = EvalConfig.from_dict(values["eval"])
        if "image_scale" in values:
            values["image_scale"] = tuple(values["image_scale"])
        return cls(**values)

    def replace(self, **changes: Any) -> "RunConfig":
        return dataclasses.replace(self, **changes)

    def identity(self) -> dict[str, Any]:
        """What makes two runs the same: the resolved network instead of its spelling, the backbone file
        by content (`backbone_init`) instead of its path; no speed, logging or label fields
        (`num_workers`, the schedule's `name`, `checkpoint_every`, `log_every`)."""
        out = self.to_dict()
        for key in _NOT_IDENTITY:
            out.pop(key, None)
        for key in _SCHEDULE_NOT_IDENTITY:
            out["schedule"].pop(key, None)
        out.pop("preset")
        out.pop("model_flags")
        out.pop("backbone_weights")
        out.pop("backbone_weights_sha256")
        out["backbone_init"] = self.backbone_init()
        out["model"] = self.model_config().to_dict()
        return json.loads(json.dumps(out))

    def backbone_init(self) -> str:
        """What the trunk starts from, by content: a published file's name (its hash is in the name),
        `sha256:<digest>` for another file, or "random" (smoke scale)."""
        from scnet.weights.published import published_for

        published = published_for(self.model_config().backbone)
        if self.backbone_weights is not None:
            if published is not None and self.backbone_weights_sha256.startswith(published.sha256_prefix):
                return published.file_name
            return f"sha256:{self.backbone_weights_sha256}"
        if self.scale == "paper" and published is not None:
            return published.file_name
        return "random"

    def run_id(self) -> str:
        """A stable 12-hex-digit hash of the canonical JSON of `identity()`."""
        canonical = json.dumps(self.identity(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:12]
