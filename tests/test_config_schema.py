"""The workflow's JSON schema and the package's own validation agree on every model."""

import copy
from pathlib import Path

import jsonschema
import pytest
import yaml

from ssvae.config import TrainConfig
from ssvae.models import MODELS

REPO = Path(__file__).resolve().parents[1]
SCHEMA = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())
CONFIG = yaml.safe_load((REPO / "config.yaml").read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)


def with_run(model: str, params: dict | None) -> dict:
    config = copy.deepcopy(CONFIG)
    run = {"label": "a run", "model": model}
    if params is not None:
        run["params"] = params
    config["runs"] = {"the_run": run}
    config["compare"] = ["the_run"]
    return config


def valid_value(name: str) -> float:
    return 0.5 if name == "eps_mean" else 1.5


def all_settings(model: str) -> dict:
    return {name: valid_value(name) for name in MODELS[model].settings}


def test_schema_names_exactly_the_package_models() -> None:
    assert set(SCHEMA["$defs"]["run"]["properties"]["model"]["enum"]) == set(MODELS)


@pytest.mark.parametrize("model", sorted(MODELS))
def test_schema_accepts_every_setting_the_model_takes(model: str) -> None:
    VALIDATOR.validate(with_run(model, all_settings(model)))
    TrainConfig(run="the_run", model=model, seed=1, params=all_settings(model))


@pytest.mark.parametrize("model", sorted(MODELS))
def test_schema_requires_what_the_model_requires(model: str) -> None:
    required = {name for name, s in MODELS[model].settings.items() if s.default is None}
    for name in required:
        params = {k: v for k, v in all_settings(model).items() if k != name}
        assert not VALIDATOR.is_valid(with_run(model, params)), name
        with pytest.raises(ValueError, match=name):
            MODELS[model].resolve_params(params)
    if not required:
        VALIDATOR.validate(with_run(model, None))


@pytest.mark.parametrize("model", sorted(MODELS))
def test_schema_refuses_settings_the_model_does_not_have(model: str) -> None:
    params = all_settings(model) | {"no_such_setting": 1.0}
    assert not VALIDATOR.is_valid(with_run(model, params))
    with pytest.raises(ValueError, match="no_such_setting"):
        MODELS[model].resolve_params(params)


def test_config_yaml_and_the_smoke_preset_validate_and_resolve() -> None:
    smoke = yaml.safe_load((REPO / "workflow/configs/smoke.yaml").read_text())
    for config in (CONFIG, CONFIG | smoke):
        VALIDATOR.validate(config)
        for run in config["compare"]:
            spec = config["runs"][run]
            TrainConfig(run=run, model=spec["model"], seed=1, params=spec.get("params", {}))
    assert len(CONFIG["compare"]) == 9
    assert CONFIG["seeds"] == list(range(1, 11))
    assert CONFIG["epochs"] == 300
