"""Seeds trained together (a pack): each seed's numbers are those it gets alone, a seed that
diverges leaves the others to finish, and a pack's seeds resume from their own checkpoints."""

from pathlib import Path

import numpy as np
import pytest
import torch
from labeled_split import split_file
from run_contents import run_file_contents

from ssvae import job, loop, runfile, store
from ssvae.config import MODEL_PARAMS, ConfigError, TrainConfig
from ssvae.job import SeedFiles, TrainingDiverged, train_pack
from ssvae.models import MODELS

CPU = torch.device("cpu")
PACK = [1, 2, 3]
# A clipping threshold the gradients pass (about 10 per seed against the original's 5,000), so
# that every step clips, each seed by its own norm.
SHORT = {"epochs": 1, "steps_per_epoch": 3, "eval_every": 1, "batch_size": 20}
SHORT |= {"grad_norm_per_1000": 0.002}
# float64: a seed's computation differs in a pack only in how kernels order their sums (a batched
# matmul over 3 seeds, BatchNorm over 3 seeds' columns), each result within about 1e-12 of the
# other (u = 1.1e-16, sums of at most 10^4 terms); measured after 5 steps on an AMD CPU, the
# largest differences are 6e-13 in a parameter and 5e-12 in a metric sum. Another seed's stream,
# statistics or state changes them by more than 1e-4 (Adam moves each weight by about lr = 3e-4
# in its first steps), so 1e-8 tells the two apart whatever the CPU.
RTOL = 1e-8


def quiet(*args, **kwargs) -> None:
    pass


def config(model: str, seed: int = 2, **overrides) -> TrainConfig:
    params = {"sharpening": 3.0} if "sharpening" in MODEL_PARAMS[model].get("required", []) else {}
    return TrainConfig(
        run=f"pack_{model}", model=model, seed=seed, params=params, **SHORT | overrides
    )


def assert_same_numbers(found: Path, expected: Path) -> None:
    got, want = run_file_contents(found), run_file_contents(expected)
    assert got.keys() == want.keys()
    for name, values in want.items():
        if values.dtype.kind == "f":
            np.testing.assert_allclose(got[name], values, rtol=RTOL, atol=0, err_msg=name)
        else:
            np.testing.assert_array_equal(got[name], values, err_msg=name)


@pytest.fixture(scope="module")
def splits(small_mnist: Path, tmp_path_factory) -> dict[int, Path]:
    directory = tmp_path_factory.mktemp("splits")
    return {seed: split_file(small_mnist, directory, seed) for seed in (*PACK, 4, 5)}


def pack_files(directory: Path, seeds: list[int], splits: dict, checkpoints: bool = False):
    return [
        SeedFiles(
            splits[seed],
            directory / f"seed{seed}" / "run.h5",
            directory / f"seed{seed}" / "checkpoint.pt" if checkpoints else None,
        )
        for seed in seeds
    ]


@pytest.mark.parametrize("model", list(MODELS))
def test_a_seed_in_a_pack_gets_the_numbers_it_gets_alone(
    model: str, small_mnist, splits, tmp_path, float64_default
) -> None:
    """Every logged metric, evaluation, z statistic and sample grid of seed 2, trained beside
    seeds 1 and 3, equals seed 2 trained alone: its own split, draws, BatchNorm statistics,
    clipping, L2 term and Adam state."""
    cfgs = [config(model, seed) for seed in PACK]
    files = pack_files(tmp_path / "pack", PACK, splits)
    train_pack(cfgs, small_mnist, files, CPU, log=quiet)
    alone = tmp_path / "alone.h5"
    job.train(config(model), small_mnist, splits[2], alone, CPU, log=quiet)
    assert_same_numbers(files[1].out, alone)
    attrs = runfile.read_attrs(files[1].out)
    assert (attrs["seed"], list(attrs["seeds_in_job"])) == (2, PACK)
    threshold = SHORT["grad_norm_per_1000"] * attrs["n_params"] / 1000
    gnorm = runfile.read_history(files[1].out)["train"]["gnorm"]  # after clipping
    np.testing.assert_allclose(gnorm, threshold, rtol=1e-12)  # every step was clipped
    # The seeds beside it trained on their own: their numbers are not seed 2's.
    losses = [runfile.read_history(f.out)["train"]["loss"][-1] for f in files]
    assert len(set(losses)) == 3


def test_a_diverging_seed_leaves_the_others_to_finish(
    small_mnist, splits, tmp_path, monkeypatch, float64_default
) -> None:
    """Seed 4's weights are made non-finite: its loss is NaN from the first step. Seed 5 beside
    it finishes with the numbers it gets alone; seed 4 keeps its epochs in run.diverged.h5
    and the job says so."""
    build = loop.build_training

    def poisoned_first_seed(cfg, seeds, device):
        model, optimizer = build(cfg, seeds, device)
        if len(seeds) > 1:
            with torch.no_grad():
                model.classifier.outputs[0].bias[0] = float("nan")
        return model, optimizer

    monkeypatch.setattr(loop, "build_training", poisoned_first_seed)
    cfgs = [config("ExactM2", seed, epochs=2) for seed in (4, 5)]
    files = pack_files(tmp_path / "pack", [4, 5], splits, checkpoints=True)
    result_store = store.ResultStore(tmp_path / "store")
    store.request_retrain(files[0].out)  # a forced retrain that diverges ends its request too
    with pytest.raises(TrainingDiverged, match="seed 4: non-finite loss at epoch 0") as error:
        train_pack(cfgs, small_mnist, files, CPU, log=quiet, result_store=result_store)
    assert store.pending_retrain(files[0].out) is None
    assert "seed 5" not in str(error.value)
    assert not files[0].out.exists()
    assert runfile.read_attrs(runfile.diverged_path(files[0].out))["status"] == "diverged"
    alone = tmp_path / "alone.h5"
    job.train(config("ExactM2", 5, epochs=2), small_mnist, splits[5], alone, CPU, log=quiet)
    assert_same_numbers(files[1].out, alone)
    # Snakemake deletes a failed job's outputs; the rerun takes seed 5 from the result store
    # and does not train seed 4 again (the same computation would diverge again).
    files[1].out.unlink()
    messages = []
    with pytest.raises(TrainingDiverged, match="seed 4 diverged before .* not trained again"):
        train_pack(cfgs, small_mnist, files, CPU, log=lambda line, **_: messages.append(line),
                   result_store=result_store)  # fmt: skip
    assert_same_numbers(files[1].out, alone)
    assert not any("epoch" in message for message in messages)  # nothing trained


def test_a_pack_is_seeds_of_one_run(small_mnist, splits, tmp_path) -> None:
    files = pack_files(tmp_path, [4, 5], splits)
    with pytest.raises(ConfigError, match="seed 5 has other settings than seed 4"):
        train_pack([config("MLP", 4), config("MLP", 5, lr=1e-3)], small_mnist, files, CPU)
    with pytest.raises(ConfigError, match=r"seeds: \[4, 4\] names a seed twice"):
        train_pack([config("MLP", 4), config("MLP", 4)], small_mnist, files, CPU)
    assert not any(path.exists() for path in tmp_path.rglob("*.h5"))


def test_a_seed_stopped_before_its_first_step_resumes_beside_a_fresh_one(
    small_mnist, splits, tmp_path, float64_default
) -> None:
    """Seed 4's checkpoint is from before any step (the job was stopped at once); seed 5 has
    none. The job trains each from where it stands, and each gets its numbers alone."""
    files = pack_files(tmp_path / "pack", [4, 5], splits, checkpoints=True)
    with pytest.raises(loop.Preempted):
        job.train(config("MLP", 4), small_mnist, splits[4], files[0].out, CPU, log=quiet,
                    checkpoint_path=files[0].checkpoint, stop=lambda: True)  # fmt: skip
    assert files[0].checkpoint.exists()
    train_pack([config("MLP", 4), config("MLP", 5)], small_mnist, files, CPU, log=quiet)
    for seed, seed_files in zip((4, 5), files, strict=True):
        alone = tmp_path / f"alone{seed}.h5"
        job.train(config("MLP", seed), small_mnist, splits[seed], alone, CPU, log=quiet)
        assert_same_numbers(seed_files.out, alone)
