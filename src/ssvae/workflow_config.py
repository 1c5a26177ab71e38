"""The workflow's config checked before any job runs: its JSON schema, then what the package
itself would refuse (each compared run's settings), each failure as one line naming the key and
its value. The Snakefile calls `validate`; tests call it in-process."""

import math

import jsonschema
import yaml

from ssvae.config import ConfigError, run_settings
from ssvae.data import N_TRAIN


def validate(config: dict, schema: dict) -> None:
    """Raise ConfigError with one line naming the first invalid key and its value: the schema,
    then what each compared run's settings would refuse at train time. Numbers and booleans
    that snakemake --config passed as strings are typed in place first."""
    typed_from_command_line(config, schema)
    validator = jsonschema.Draft202012Validator(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(config))
    if error is not None:
        key = ".".join(str(part) for part in error.absolute_path)
        if error.validator == "additionalProperties":
            known = error.schema.get("properties", {})
            extra = next(name for name in error.instance if name not in known)
            raise ConfigError(
                f"invalid config: {'.'.join(filter(None, [key, extra]))}: not a known key"
                f" (known: {', '.join(known)})"
            )
        value = repr(error.instance) if len(repr(error.instance)) <= 200 else "..."
        # A pattern is explained by its schema's description rather than shown as a regex.
        if error.validator == "pattern" and "description" in error.schema:
            message = f"must be {error.schema['description']}"
        else:
            message = error.message[:200]
        raise ConfigError(f"invalid config: {key or '(top level)'} = {value}: {message}")
    for key, value in leaves(config):
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"invalid config: {key} = {value!r}: must be a finite number")
    if config["reference_run"] not in config["runs"]:
        raise ConfigError(
            f"invalid config: reference_run = {config['reference_run']!r}: not a run defined "
            f"in runs (defined: {', '.join(config['runs'])})"
        )
    undefined = [run for run in config["compare"] if run not in config["runs"]]
    if undefined:
        raise ConfigError(f"invalid config: compare names {undefined[0]!r}, not defined in runs")
    for run in config["compare"]:
        try:
            settings = run_settings(config, run, config["seeds"][0])
        except ConfigError as err:
            key = str(err).split(":")[0]
            where = f"runs.{run}." if key.startswith("params.") else "training."
            raise ConfigError(f"invalid config: {where}{err}") from None
    images = config["steps_per_epoch"] * settings.batch_size
    if images > N_TRAIN:
        raise ConfigError(
            f"invalid config: training.batch_size = {settings.batch_size}: "
            f"{config['steps_per_epoch']} steps of it take {images:,} images an epoch, more "
            f"than the {N_TRAIN:,} training images"
        )


def leaves(value, key=""):
    """(dotted key, value) of every scalar in a nested config."""
    if isinstance(value, dict):
        for name, child in value.items():
            yield from leaves(child, f"{key}.{name}" if key else str(name))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield from leaves(child, f"{key}.{index}")
    else:
        yield key, value


def typed_from_command_line(value, schema, root=None):
    """snakemake --config reads a list or a mapping with YAML's base loader, so every scalar in
    it is a string ("seeds=[1,2]" gives ['1', '2']): give back the numbers and booleans the
    schema asks for there, in place."""
    root = root or schema
    schema = resolve_ref(schema, root)
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        children = [
            (name, properties.get(name, schema.get("additionalProperties"))) for name in value
        ]
    elif isinstance(value, list):
        children = [(index, schema.get("items")) for index in range(len(value))]
    else:
        return
    for place, child_schema in children:
        child_schema = resolve_ref(child_schema, root)
        if isinstance(value[place], str):
            value[place] = typed(value[place], child_schema)
        else:
            typed_from_command_line(value[place], child_schema, root)


def resolve_ref(schema, root):
    """A schema with a local $ref ("#/$defs/name") followed; {} where there is none."""
    if not isinstance(schema, dict):
        return {}
    if "$ref" in schema:
        return resolve_ref(root["$defs"][schema["$ref"].removeprefix("#/$defs/")], root)
    return schema


def typed(text, schema):
    """`text` as the number or boolean `schema` expects, or unchanged."""
    try:
        parsed = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    kind = schema.get("type")
    if kind == "boolean" and isinstance(parsed, bool):
        return parsed
    is_number = not isinstance(parsed, bool) and (
        isinstance(parsed, int) or (kind == "number" and isinstance(parsed, float))
    )
    if kind in ("integer", "number") and is_number:
        return parsed
    if isinstance(parsed, bool) and parsed in schema.get("enum", []):
        return parsed
    return text
