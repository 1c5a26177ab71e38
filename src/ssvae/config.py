"""The settings of one training run, resolved and checked against the config schema
(config.schema.yaml beside this module), which is the one place where every setting, its default
and its bounds are written. No torch here: the workflow imports this module when it plans."""

import argparse
import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import jsonschema
import yaml

from ssvae.data import N_TRAIN
from ssvae.errors import UserError

SCHEMA_PATH = Path(__file__).with_name("config.schema.yaml")
SCHEMA = yaml.safe_load(SCHEMA_PATH.read_text())
DEFS = SCHEMA["$defs"]
MODEL_PARAMS = DEFS["params"]  # each model's own settings, by model name

# The schema of each TrainConfig setting but params (whose schema is its model's).
SETTING_SCHEMAS = {
    "run": {"type": "string", "minLength": 1},
    "model": {"enum": list(MODEL_PARAMS)},
    "seed": DEFS["seed"],
    "epochs": DEFS["epochs"],
    "steps_per_epoch": DEFS["steps_per_epoch"],
    "eval_every": DEFS["eval_every"],
    **DEFS["training"]["properties"],
}


class ConfigError(UserError, ValueError):
    """An invalid setting; the message names the key and the value."""


class SettingError(ConfigError):
    """A setting that its schema (or a rule between settings) refuses: `key` (dotted), the
    `value` found and the `problem`, which the caller may place in its own config."""

    def __init__(self, key: str, value, problem: str) -> None:
        self.key, self.value, self.problem = key, value, problem
        shown = repr(value) if len(repr(value)) <= 200 else "..."
        super().__init__(f"{key} = {shown}: {problem}" if key else f"{shown}: {problem}")

    def under(self, prefix: str) -> "SettingError":
        """The same error, its key placed under `prefix` (a dotted key)."""
        return SettingError(".".join(filter(None, [prefix, self.key])), self.value, self.problem)


# JSON Schema's integers include 3.0; a setting that counts (epochs, seeds, batch size) must be
# an int, or it would be written "3.0" and fail where it is used.
Validator = jsonschema.validators.extend(
    jsonschema.Draft202012Validator,
    type_checker=jsonschema.Draft202012Validator.TYPE_CHECKER.redefine(
        "integer", lambda checker, value: isinstance(value, int) and not isinstance(value, bool)
    ),
)


def check(value, schema: dict, key: str = "") -> None:
    """Raise SettingError for the first part of `value` that `schema` (which may refer to the
    config schema's $defs) refuses, or any number in it that is not finite."""
    validator = Validator({"$defs": DEFS} | schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(value))
    if error is not None:
        where = ".".join([key, *map(str, error.absolute_path)]).strip(".")
        if error.validator == "additionalProperties":
            known = error.schema.get("properties", {})
            extra = next(name for name in error.instance if name not in known)
            raise SettingError(
                f"{where}.{extra}".strip("."),
                error.instance[extra],
                f"not a known key (known: {', '.join(known) or 'none'})",
            )
        # A pattern is explained by its schema's description rather than shown as a regex.
        if error.validator == "pattern" and "description" in error.schema:
            problem = f"must be {error.schema['description']}"
        else:
            problem = error.message[:200]
        raise SettingError(where, error.instance, problem)
    for where, number in leaves(value, key):
        if isinstance(number, float) and not math.isfinite(number):
            raise SettingError(where, number, "must be a finite number")


def leaves(value, key=""):
    """(dotted key, value) of every scalar in a nested value."""
    if isinstance(value, dict):
        for name, child in value.items():
            yield from leaves(child, f"{key}.{name}" if key else str(name))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield from leaves(child, f"{key}.{index}")
    else:
        yield key, value


def resolve_params(model: str, params: dict) -> dict[str, float]:
    """Every setting of `model`, checked, defaults filled in (SettingError names a bad one)."""
    check(model, SETTING_SCHEMAS["model"], "model")
    schema = MODEL_PARAMS[model]
    check(params, schema, "params")
    settings = schema.get("properties", {})
    given = {name: s["default"] for name, s in settings.items() if "default" in s} | params
    return {name: float(given[name]) for name in settings if name in given}


def default(name: str):
    """The schema's default of a TrainConfig setting, as the dataclass field's default."""
    return field(default=SETTING_SCHEMAS[name]["default"])


@dataclass(frozen=True)
class TrainConfig:
    run: str
    model: str
    seed: int
    params: dict = field(default_factory=dict)  # model-specific (kl_factor, sharpening, ...)
    epochs: int = default("epochs")  # the last epoch index: 0..epochs
    steps_per_epoch: int = default("steps_per_epoch")
    eval_every: int = default("eval_every")
    batch_size: int = default("batch_size")
    lr: float = default("lr")
    lr_decay: float = default("lr_decay")
    lr_floor: float = default("lr_floor")
    l2: float = default("l2")
    grad_norm_per_1000: float = default("grad_norm_per_1000")
    classifier_weight: float = default("classifier_weight")
    anneal_classifier_steps: int = default("anneal_classifier_steps")
    input_dropout: float = default("input_dropout")
    z_noise_std: float = default("z_noise_std")

    def __post_init__(self):
        for setting in dataclasses.fields(self):
            if setting.name == "params":
                continue
            value = getattr(self, setting.name)
            check(value, SETTING_SCHEMAS[setting.name], setting.name)
            if setting.type is float:
                # 2 and 2.0 are one setting: the JSON that decides a rerun must not differ.
                object.__setattr__(self, setting.name, float(value))
        if self.lr_floor > self.lr:
            raise SettingError("lr_floor", self.lr_floor, f"must be at most lr ({self.lr!r})")
        images = self.steps_per_epoch * self.batch_size
        if images > N_TRAIN:
            raise SettingError(
                "batch_size",
                self.batch_size,
                f"{self.steps_per_epoch} steps of it take {images:,} images an epoch, more than "
                f"the {N_TRAIN:,} training images",
            )
        # Frozen, so set through object: record every setting the model will use.
        object.__setattr__(self, "params", resolve_params(self.model, self.params))

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise SettingError(unknown[0], values[unknown[0]], "unknown setting")
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
    for model, schema in MODEL_PARAMS.items():
        required = schema.get("required", [])
        each = [
            f"{name} ({'required' if name in required else s['default']})"
            for name, s in schema.get("properties", {}).items()
        ]
        lines.append(f"    {model:<23} {', '.join(each) or 'none'}")
    return "\n".join(lines)


def config_value(key: str):
    """An argparse `type` for an option that carries the config's top-level `key` (a number):
    checked against that key's schema, so the option accepts what the config accepts."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        try:
            check(value, SCHEMA["properties"][key])
        except SettingError as err:
            raise argparse.ArgumentTypeError(f"{text}: {err.problem}") from None
        return value

    parse.__name__ = key  # argparse names the type in its messages
    return parse


def run_settings(config: dict, run: str, seed: int) -> TrainConfig:
    """What one (run, seed) of the workflow config computes: the run's model and params, the
    seed, the schedule and the training overrides, defaults filled in. How it is computed
    (device, threads, compile, TF32, checkpoints) is not part of it. A refused setting is named
    where the config says it."""
    if run not in config["runs"]:
        defined = ", ".join(config["runs"])
        raise ConfigError(f"run: {run!r} is not defined under runs (defined: {defined})")
    definition = config["runs"][run]
    schedule = {key: config[key] for key in ("epochs", "steps_per_epoch", "eval_every")}
    try:
        return TrainConfig.from_dict(
            {
                "run": run,
                "model": definition["model"],
                "params": definition.get("params", {}),
                "seed": seed,
                **schedule,
                **config.get("training", {}),
            }
        )
    except SettingError as err:
        top = err.key.split(".")[0]
        if top in ("model", "params"):
            raise err.under(f"runs.{run}") from None
        raise err.under("training" if top in DEFS["training"]["properties"] else "") from None
