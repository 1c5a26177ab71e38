"""The config schema is where every setting is defined: each model takes exactly the params the
schema gives it, TrainConfig's defaults are the schema's, and what the schema refuses training
refuses too."""

import dataclasses
import inspect
from pathlib import Path

import jsonschema
import pytest
import yaml

from ssvae.config import (
    MODEL_PARAMS,
    SCHEMA,
    SETTING_SCHEMAS,
    SettingError,
    TrainConfig,
    resolve_params,
)
from ssvae.models import MODELS, model_class

REPO = Path(__file__).resolve().parents[1]
CONFIG = yaml.safe_load((REPO / "config.yaml").read_text())
SHARED_ARGUMENTS = {"self", "random", "input_dropout", "classifier_weight", "z_noise_std"}


def valid_value(name: str) -> float:
    return 0.5 if name == "eps_mean" else 1.5


def all_settings(model: str) -> dict:
    return {name: valid_value(name) for name in MODEL_PARAMS[model].get("properties", {})}


def test_the_schema_is_a_valid_json_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


def test_the_schema_defines_params_for_exactly_the_package_models() -> None:
    assert list(MODEL_PARAMS) == list(MODELS)


@pytest.mark.parametrize("model", list(MODELS))
def test_each_model_takes_exactly_the_params_the_schema_defines(model: str) -> None:
    arguments = set(inspect.signature(model_class(model).__init__).parameters)
    assert arguments - SHARED_ARGUMENTS == set(MODEL_PARAMS[model].get("properties", {}))


@pytest.mark.parametrize("model", list(MODELS))
def test_every_param_is_resolved_with_its_given_value_or_default(model: str) -> None:
    assert resolve_params(model, all_settings(model)) == all_settings(model)
    schema = MODEL_PARAMS[model]
    required = {name: valid_value(name) for name in schema.get("required", [])}
    defaults = {name: s["default"] for name, s in schema.get("properties", {}).items()
                if "default" in s}  # fmt: skip
    assert resolve_params(model, required) == required | defaults


@pytest.mark.parametrize("model", list(MODELS))
def test_a_missing_required_or_unknown_param_is_named(model: str) -> None:
    for name in MODEL_PARAMS[model].get("required", []):
        params = {k: v for k, v in all_settings(model).items() if k != name}
        with pytest.raises(SettingError, match=name):
            resolve_params(model, params)
    with pytest.raises(SettingError, match=r"params\.no_such_setting = 1\.0: not a known key"):
        resolve_params(model, all_settings(model) | {"no_such_setting": 1.0})


def test_train_config_defaults_are_the_schemas() -> None:
    cfg = TrainConfig(run="r", model="MLP", seed=1)
    for setting in dataclasses.fields(TrainConfig):
        if "default" in SETTING_SCHEMAS.get(setting.name, {}):
            assert getattr(cfg, setting.name) == SETTING_SCHEMAS[setting.name]["default"]
    assert cfg.epochs == 300 and cfg.lr == 5e-4 and cfg.classifier_weight == 128.0


@pytest.mark.parametrize(
    ("key", "value"),
    [("epochs", -1), ("input_dropout", 1.0), ("lr", 0.0), ("seed", -1), ("lr", True),
     ("batch_size", 2.5), ("l2", float("nan")), ("epochs", 3.0), ("seed", 1.0)],
)  # fmt: skip
def test_what_the_schema_refuses_train_config_refuses(key: str, value) -> None:
    with pytest.raises(SettingError, match=f"^{key} = "):
        TrainConfig.from_dict({"run": "r", "model": "ExactM2", "seed": 1, key: value})


def test_config_yaml_and_the_smoke_preset_resolve() -> None:
    smoke = yaml.safe_load((REPO / "workflow/configs/smoke.yaml").read_text())
    for config in (CONFIG, CONFIG | smoke):
        for run in config["compare"]:
            spec = config["runs"][run]
            TrainConfig(run=run, model=spec["model"], seed=1, params=spec.get("params", {}))
    assert len(CONFIG["compare"]) == 9
    assert CONFIG["seeds"] == list(range(1, 11))
    assert CONFIG["epochs"] == 300
