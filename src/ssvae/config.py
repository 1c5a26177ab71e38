"""The resolved settings of one training run, with the original's values as defaults (spec 6.1)."""

import dataclasses
import json
import math
from dataclasses import dataclass, field

from ssvae.errors import UserError
from ssvae.models import MODELS


class ConfigError(UserError, ValueError):
    """An invalid setting; the message names the key and the value."""


@dataclass(frozen=True)
class TrainConfig:
    run: str
    model: str
    seed: int
    params: dict = field(default_factory=dict)  # model-specific (kl_factor, sharpening, ...)
    epochs: int = 300  # the last epoch index: epochs 0..300 are 301 epochs of training
    steps_per_epoch: int = 500
    eval_every: int = 10
    batch_size: int = 100
    lr: float = 5e-4
    lr_decay: float = 1.0005
    lr_floor: float = 1e-4
    l2: float = 0.1
    grad_norm_per_1000: float = 2.5
    classifier_weight: float = 128.0
    anneal_classifier_steps: int = 50_000
    input_dropout: float = 0.25
    z_noise_std: float = 0.05

    def __post_init__(self):
        for setting in dataclasses.fields(self):
            value = getattr(self, setting.name)
            accepted = (int, float) if setting.type is float else setting.type
            if isinstance(value, bool) or not isinstance(value, accepted):
                raise ConfigError(
                    f"{setting.name}: expected {setting.type.__name__}, got {value!r}"
                )
            if setting.type is float:
                if not math.isfinite(value):
                    raise ConfigError(f"{setting.name}: must be a finite number, got {value!r}")
                # 2 and 2.0 are one setting: the JSON that decides a rerun must not differ.
                object.__setattr__(self, setting.name, float(value))
        if self.model not in MODELS:
            known = ", ".join(sorted(MODELS))
            raise ConfigError(f"model: unknown model name {self.model!r} (known: {known})")
        checks = {
            "seed": (self.seed >= 0, "at least 0"),
            "epochs": (self.epochs >= 0, "at least 0"),
            "steps_per_epoch": (self.steps_per_epoch >= 1, "at least 1"),
            "eval_every": (self.eval_every >= 1, "at least 1"),
            "batch_size": (self.batch_size >= 2, "at least 2"),
            "lr": (self.lr > 0, "above 0"),
            "lr_decay": (self.lr_decay >= 1, "at least 1"),
            "lr_floor": (0 < self.lr_floor <= self.lr, f"above 0 and at most lr ({self.lr!r})"),
            "l2": (self.l2 >= 0, "at least 0"),
            "grad_norm_per_1000": (self.grad_norm_per_1000 > 0, "above 0"),
            "classifier_weight": (self.classifier_weight >= 0, "at least 0"),
            "anneal_classifier_steps": (self.anneal_classifier_steps >= 1, "at least 1"),
            "input_dropout": (0 <= self.input_dropout < 1, "at least 0 and below 1"),
            "z_noise_std": (self.z_noise_std >= 0, "at least 0"),
        }
        for key, (ok, requirement) in checks.items():
            if not ok:
                raise ConfigError(f"{key}: must be {requirement}, got {getattr(self, key)!r}")
        try:
            # Frozen, so set through object: record every setting the model will use.
            object.__setattr__(self, "params", MODELS[self.model].resolve_params(self.params))
        except ValueError as err:
            raise ConfigError(f"params.{err}") from err

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"{unknown[0]}: unknown setting (value {values[unknown[0]]!r})")
        required = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING
                    and f.default_factory is dataclasses.MISSING]  # fmt: skip
        missing = [name for name in required if name not in values]
        if missing:
            raise ConfigError(
                f"{missing[0]}: required setting missing (required: {', '.join(required)})"
            )
        return cls(**values)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)


def settings_help() -> str:
    """The keys of a run's settings, which are required and the defaults, for --help."""
    lines = ["keys of --run-config (a JSON object):"]
    for setting in dataclasses.fields(TrainConfig):
        if setting.default is not dataclasses.MISSING:
            lines.append(f"  {setting.name:<25} default {setting.default!r}")
        elif setting.default_factory is dataclasses.MISSING:
            lines.append(f"  {setting.name:<25} required")
    lines.append("  params                    the model's own settings, by model:")
    for name, model in MODELS.items():
        each = [
            f"{key} ({'required' if s.default is None else s.default})"
            for key, s in model.settings.items()
        ]
        lines.append(f"    {name:<23} {', '.join(each) or 'none'}")
    return "\n".join(lines)


def run_settings(config: dict, run: str, seed: int) -> TrainConfig:
    """What one (run, seed) of the workflow config computes: the run's model and params, the
    seed, the schedule and the training overrides, defaults filled in. How it is computed
    (device, threads, compile, TF32, checkpoints) is not part of it."""
    if run not in config["runs"]:
        defined = ", ".join(config["runs"])
        raise ConfigError(f"run: {run!r} is not defined under runs (defined: {defined})")
    definition = config["runs"][run]
    return TrainConfig.from_dict(
        {
            "run": run,
            "model": definition["model"],
            "params": definition.get("params", {}),
            "seed": seed,
            "epochs": config["epochs"],
            "steps_per_epoch": config["steps_per_epoch"],
            "eval_every": config["eval_every"],
            **config.get("training", {}),
        }
    )
