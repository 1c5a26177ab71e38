"""The workflow's config checked before any job runs: its JSON schema, then each run's settings
as training takes them, each failure as one line naming the key and its value. The workflow
calls `validate`; tests call it in-process."""

import yaml

from ssvae.config import SCHEMA, ConfigError, SettingError, check, run_settings
from ssvae.splits import MAX_LABELS_PER_CLASS


def validate(config: dict) -> None:
    """Raise ConfigError with one line naming the first invalid key and its value: the schema,
    then each run's settings as training would take them. Numbers and booleans that snakemake
    --config passed as strings are typed in place first."""
    typed_from_command_line(config, SCHEMA)
    try:
        check(config, SCHEMA)
        if config["reference_run"] not in config["runs"]:
            raise SettingError(
                "reference_run",
                config["reference_run"],
                f"not a run defined in runs (defined: {', '.join(config['runs'])})",
            )
        too_many = [k for k in config["labels_per_class"] if k > MAX_LABELS_PER_CLASS]
        if too_many:
            raise SettingError(
                "labels_per_class",
                too_many[0],
                f"more labeled images a class than the {MAX_LABELS_PER_CLASS} training images "
                "of the smallest class (5)",
            )
        undefined = [run for run in config["compare"] if run not in config["runs"]]
        if undefined:
            raise SettingError("compare", undefined[0], "not a run defined in runs")
        for run in config["runs"]:
            run_settings(config, run, config["seeds"][0])
    except SettingError as err:
        raise ConfigError(f"invalid config: {err}") from None


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
