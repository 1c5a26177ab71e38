"""The workflow config's checks, in-process: the config snakemake would build from config.yaml,
the smoke preset and a --config override (parsed by snakemake's own parser), refused with one
line naming the key and its value. tests/test_workflow.py runs a few of these through snakemake."""

from pathlib import Path

import pytest
import yaml
from snakemake.cli import parse_config
from snakemake.utils import update_config
from workflow_helpers import REPO, SMOKE

from ssvae.config import ConfigError
from ssvae.workflow_config import validate


def config_with(override: str | None, configfile: str = SMOKE) -> dict:
    """config.yaml, updated by the --configfile, then by the --config override, as snakemake."""
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    update_config(config, yaml.safe_load(Path(REPO / configfile).read_text()))
    if override is not None:
        update_config(config, parse_config([override]))
    return config


@pytest.mark.parametrize("configfile", ["config.yaml", SMOKE])
def test_the_shipped_configs_are_valid(configfile: str) -> None:
    validate(config_with(None, configfile))


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("epochs=-1", "epochs = -1"),
        ("epochs=3.0", "epochs = 3.0"),
        ("results_dir=../elsewhere", "results_dir = '../elsewhere'"),
        ("results_dir=/abs", "results_dir = '/abs'"),
        ("results_dir='a b'", "results_dir = 'a b'"),
        ("results_dir=./x", "results_dir = './x': must be a relative path"),
        ("results_dir=x/", "results_dir = 'x/'"),
        ("seeds=[1,-2]", "seeds.1"),
        ("compare=[NoSuchRun]", "compare = 'NoSuchRun': not a run defined in runs"),
        ("reference_run=M3", "reference_run = 'M3': not a run defined in runs"),
        ("epoch=5", "epoch = 5: not a known key"),
        ("seeds=[429496730]", "seeds.0 = 429496730"),
        ("labels_per_class=[0]", "labels_per_class.0 = 0"),
        (
            "labels_per_class=[10,3,10]",
            "labels_per_class = [10, 3, 10]: [10, 3, 10] has non-unique",
        ),
        ("labels_per_class=[]", "labels_per_class = []"),
        (
            "labels_per_class=[10,4507]",
            "labels_per_class = 4507: more labeled images a class than the 4506 training images "
            "of the smallest class (5)",
        ),
        ("active_kl_threshold=.nan", "active_kl_threshold = nan: must be a finite number"),
        ("training={lr: .nan}", "training.lr = nan"),
        ("training={lr_floor: 0.01}", "training.lr_floor = 0.01: must be at most lr (0.0005)"),
        ("training={batch_size: 20001}", "training.batch_size = 20001"),
        ("runs={MLP: {params: {sharpening: 1}}}", "runs.MLP.params"),
        ("runs={ExactM2: {params: {kl_factor: .inf}}}", "runs.ExactM2.params.kl_factor = inf"),
        ("runs={ExactM2: {label: 'E{run}'}}", "runs.ExactM2.label = 'E{run}'"),
        ('runs={ExactM2: {label: "E\\n"}}', "runs.ExactM2.label"),
        ('runs={"MLP\\n": {label: M, model: MLP}}', "runs = 'MLP\\n'"),
    ],
    ids=lambda value: value if "=" in value else "",
)
def test_invalid_config_is_one_line_naming_it(override: str, named: str) -> None:
    with pytest.raises(ConfigError) as raised:
        validate(config_with(override))
    message = str(raised.value)
    assert message.startswith("invalid config: ") and "\n" not in message
    assert named in message


def test_one_epoch_is_a_run() -> None:
    """epochs is the last epoch's index: 0 is a run of one epoch, as TrainConfig takes it."""
    validate(config_with("epochs=0"))


def test_numbers_from_the_command_line_are_typed() -> None:
    config = config_with("seeds=[1,2]")
    validate(config)
    assert config["seeds"] == [1, 2]
