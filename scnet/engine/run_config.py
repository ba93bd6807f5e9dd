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

from scnet.config import ConfigError, ModelConfig
from scnet.engine import config_fields as fields

SCALES = ("smoke", "paper")  # the one definition (experiments and analysis import it)
SCHEDULE_NAMES = ("20e", "1x", "smoke")


# torch.manual_seed takes 64 bits; the data seeds (scnet.data.sample_seeds) need a non-negative one.
MAX_SEED = 2**63 - 1
# Longest image edge a run may ask for; beyond it one image does not fit any accelerator's memory.
MAX_IMAGE_EDGE = 8192


def _set(instance: Any, name: str, value: Any) -> None:
    """Store a checked, canonical value on a frozen dataclass."""
    object.__setattr__(instance, name, value)


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
        where = "schedule field"
        for key, low in (("epochs", 1), ("max_iters", 1)):
            _set(self, key, fields.integer(getattr(self, key), f"{where} {key!r}", low=low, optional=True))
        if (self.epochs is None) == (self.max_iters is None):
            raise ConfigError(f"schedule {self.name!r}: set exactly one of 'epochs' and 'max_iters' "
                              f"(found epochs={self.epochs}, max_iters={self.max_iters})")
        _set(self, "name", fields.text(self.name, f"{where} 'name'"))
        for key, low in (("batch_size", 1), ("warmup_iters", 0), ("checkpoint_every", 1), ("log_every", 1)):
            _set(self, key, fields.integer(getattr(self, key), f"{where} {key!r}", low=low))
        _set(self, "lr", fields.number(self.lr, f"{where} 'lr'", low=0, low_open=True))
        _set(self, "momentum", fields.number(self.momentum, f"{where} 'momentum'", low=0, high=1, high_open=True))
        _set(self, "weight_decay", fields.number(self.weight_decay, f"{where} 'weight_decay'", low=0))
        _set(self, "warmup_ratio", fields.number(self.warmup_ratio, f"{where} 'warmup_ratio'", low=0, high=1,
                                                 low_open=True))
        _set(self, "grad_clip_norm", fields.number(self.grad_clip_norm, f"{where} 'grad_clip_norm'", low=0,
                                                   low_open=True, optional=True))
        _set(self, "lr_steps", fields.integers(self.lr_steps, f"{where} 'lr_steps'", low=0))
        if list(self.lr_steps) != sorted(self.lr_steps):
            raise ConfigError(f"{where} 'lr_steps' must be increasing, found {list(self.lr_steps)}")

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
        where = "eval field"
        _set(self, "split", fields.text(self.split, f"{where} 'split'", name_like=True))
        _set(self, "batch_size", fields.integer(self.batch_size, f"{where} 'batch_size'", low=1))
        _set(self, "max_images", fields.integer(self.max_images, f"{where} 'max_images'", low=1, optional=True))
        _set(self, "speed_warmup", fields.integer(self.speed_warmup, f"{where} 'speed_warmup'", low=0))
        _set(self, "enabled", fields.boolean(self.enabled, f"{where} 'enabled'"))

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
    # IEEE float32 on CUDA, no TF32 convolutions (scnet.engine.precision). False: PyTorch's defaults, as
    # MMDetection 3.3.0 runs them. Part of the run id when true; left out of it when false, so the ids of
    # runs made before the field existed stay as they were.
    strict_fp32: bool = False
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
        where = "run config field"
        _set(self, "preset", fields.text(self.preset, f"{where} 'preset'"))
        _set(self, "data_root", fields.text(self.data_root, f"{where} 'data_root'"))
        _set(self, "scale", fields.text(self.scale, f"{where} 'scale'", choices=SCALES))
        _set(self, "seed", fields.integer(self.seed, f"{where} 'seed'", low=0, high=MAX_SEED))
        _set(self, "num_workers", fields.integer(self.num_workers, f"{where} 'num_workers'", low=0))
        _set(self, "amp", fields.boolean(self.amp, f"{where} 'amp'"))
        _set(self, "strict_fp32", fields.boolean(self.strict_fp32, f"{where} 'strict_fp32'"))
        if not isinstance(self.model_flags, Mapping) or not all(isinstance(k, str) for k in self.model_flags):
            raise ConfigError(f"{where} 'model_flags' must be an object of flag names to values, "
                              f"found {self.model_flags!r}")
        object.__setattr__(self, "model_flags", dict(self.model_flags))
        if self.image_scale is None:
            object.__setattr__(self, "image_scale", default_image_scale(self.scale))
        image_scale = fields.integers(self.image_scale, f"{where} 'image_scale'", length=2, low=1)
        if image_scale[0] < image_scale[1] or image_scale[0] > MAX_IMAGE_EDGE:
            raise ConfigError(f"{where} 'image_scale' must be (long, short) edges with {MAX_IMAGE_EDGE} >= long "
                              f">= short >= 1, e.g. (1333, 800); found {list(image_scale)}")
        object.__setattr__(self, "image_scale", image_scale)
        if self.schedule is None:
            object.__setattr__(self, "schedule", default_schedule(self.scale, "smoke" if self.scale == "smoke" else "20e"))
        if isinstance(self.schedule, Mapping):
            object.__setattr__(self, "schedule", Schedule.from_dict(self.schedule))
        if not isinstance(self.schedule, Schedule):
            raise ConfigError(f"{where} 'schedule' must be an object (the schedule's fields) or null, "
                              f"found {self.schedule!r}")
        if isinstance(self.eval, Mapping):
            object.__setattr__(self, "eval", EvalConfig.from_dict(self.eval))
        if not isinstance(self.eval, EvalConfig):
            raise ConfigError(f"{where} 'eval' must be an object (the evaluation's fields), found {self.eval!r}")
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
        # The network, resolved once; a bad flag fails now, named, not in a worker process an hour later.
        object.__setattr__(self, "_model", self._resolve_model())

    def _resolve_backbone_weights(self) -> None:
        """An absolute path and its SHA-256 (read once, when the run is configured)."""
        if self.backbone_weights is None:
            if self.backbone_weights_sha256 is not None:
                raise ConfigError("run config: 'backbone_weights_sha256' without 'backbone_weights'")
            return
        from pathlib import Path

        from scnet.messages import path_problem
        from scnet.weights.digest import file_sha256

        path = Path(self.backbone_weights).expanduser().absolute()
        object.__setattr__(self, "backbone_weights", str(path))
        if self.backbone_weights_sha256 is None:
            problem = path_problem(path)
            if problem is not None:
                raise ConfigError(f"run config: 'backbone_weights' {path} {problem}")
            object.__setattr__(self, "backbone_weights_sha256", file_sha256(path))

    def __hash__(self) -> int:
        return hash(self.run_id())

    def _resolve_model(self) -> ModelConfig:
        from scnet.presets import resolve_config

        fixed = {} if self.num_semantic_classes is None else {"num_semantic_classes": self.num_semantic_classes}
        return resolve_config(self.preset, **fixed, **self.model_flags)

    def model_config(self, **data_flags: Any) -> ModelConfig:
        """The run's network, resolved when the config was made; `data_flags` (num_classes...) come from
        the dataset and apply to the fields that neither `model_flags` nor the run config fix."""
        fixed = set(self.model_flags) | ({"num_semantic_classes"} if self.num_semantic_classes is not None else set())
        from_data = {name: value for name, value in data_flags.items() if name not in fixed}
        return self._model.replace(**from_data) if from_data else self._model

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["model_flags"] = dict(self.model_flags)
        out["image_scale"] = list(self.image_scale)
        return json.loads(json.dumps(out))  # tuples -> lists: the form config.json holds

    def to_frozen_dict(self) -> dict[str, Any]:
        """What config.json holds: the spelling (`to_dict`) and, under "model", the network it resolves
        to, so a reader sees the run's network without the code that resolves it."""
        return {**self.to_dict(), "model": json.loads(json.dumps(self.model_config().to_dict()))}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "RunConfig":
        """A run config from `to_dict` or `to_frozen_dict` values. A "model" given with them must be the
        network the spelling resolves to: otherwise the file was edited, or the preset changed since
        the run was made, and neither may pass silently as this run."""
        values = dict(values) if isinstance(values, Mapping) else values
        stored_model = values.pop("model", None) if isinstance(values, dict) else None
        _check_keys(cls, values, "run config")
        for required in ("preset", "data_root"):
            if required not in values:
                raise ConfigError(f"run config: missing field {required!r}")
        config = cls(**values)
        if stored_model is not None:
            config._check_stored_model(stored_model)
        return config

    def _check_stored_model(self, stored: Any) -> None:
        try:
            stored_config = ModelConfig.from_dict(stored) if isinstance(stored, Mapping) else None
        except (ConfigError, TypeError) as exc:
            raise ConfigError(f"run config: field 'model' is not a network this code builds ({exc}); delete "
                              "the field to take the network that 'preset' and 'model_flags' give") from None
        if stored_config is None:
            raise ConfigError(f"run config: field 'model' must be an object (the resolved network), found "
                              f"{stored!r}")
        if stored_config != self._model:
            resolved = self._model.to_dict()
            differing = sorted(k for k, v in stored_config.to_dict().items() if v != resolved[k])
            raise ConfigError(
                f"run config: field 'model' (the network the run was made with) differs from what preset "
                f"{self.preset!r} and 'model_flags' give in {', '.join(differing)}: the file was edited or "
                "the preset has changed since; restore the file, or delete 'model' to take the network the "
                "spelling gives now (a new run id)")

    def replace(self, **changes: Any) -> "RunConfig":
        return dataclasses.replace(self, **changes)

    def identity(self) -> dict[str, Any]:
        """What makes two runs the same: the resolved network instead of its spelling, the backbone file
        by content (`backbone_init`) instead of its path; no speed, logging or label fields
        (`num_workers`, the schedule's `name`, `checkpoint_every`, `log_every`)."""
        out = self.to_dict()
        for key in _NOT_IDENTITY:
            out.pop(key, None)
        if not self.strict_fp32:
            out.pop("strict_fp32")
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
