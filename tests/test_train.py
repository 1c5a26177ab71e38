"""ssvae.train: short real training runs on a reduced MNIST, and the HDF5 file they write."""

import dataclasses
import itertools
import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from labeled_split import SPLIT_SEED as SEED
from labeled_split import split_file

import ssvae
from ssvae import runfile
from ssvae.config import ConfigError, TrainConfig
from ssvae.job import TrainingDiverged, train
from ssvae.models.mlp import MLP
from ssvae.nn import SeedLinear
from ssvae.runfile import diverged_path
from ssvae.step import add_l2_term, clip_grad_norms

# Small batches keep the CPU time down; 20 unlabeled images still give ExactM2 the 200
# class-enumerated q(z|.) rows from which the last 100 are kept.
TINY_RUN = {"epochs": 1, "steps_per_epoch": 2, "eval_every": 1, "batch_size": 20}
N_PARAMS = {"ExactM2": 4_574_794, "MLP": 2_765_410}
VAE_TRAIN_METRICS = {
    "loss",
    "bound",
    "boundU",
    "boundL",
    "classifier",
    "accuracy",
    "objective",
    "pnorm",
    "gnorm",
    "hyperparameters/lr",
    "p(x)/KL_Z",
    "p(x)/KL_Y",
    "p(x)/nllX",
    "p(x,y)/KL_Z",
    "p(x,y)/nllX",
    "p(x,y)/nllY",
}


def tiny_config(model: str, **overrides) -> TrainConfig:
    return TrainConfig(run=f"tiny_{model}", model=model, seed=SEED, **(TINY_RUN | overrides))


def train_quietly(cfg: TrainConfig, small_mnist: Path, split: Path, out: Path) -> None:
    train(cfg, small_mnist, split, out, torch.device("cpu"), log=lambda *args, **kwargs: None)


def run_tiny(model: str, small_mnist, small_split, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp(model) / "run.h5"
    train_quietly(tiny_config(model), small_mnist, small_split, out)
    return out


@pytest.fixture(scope="module")
def exact_m2_run(small_mnist, small_split, tmp_path_factory) -> Path:
    return run_tiny("ExactM2", small_mnist, small_split, tmp_path_factory)


@pytest.fixture(scope="module")
def mlp_run(small_mnist, small_split, tmp_path_factory) -> Path:
    return run_tiny("MLP", small_mnist, small_split, tmp_path_factory)


def datasets(group: h5py.Group) -> dict[str, np.ndarray]:
    """Every dataset under `group`, by its path relative to it."""
    found = {}

    def collect(name: str, obj) -> None:
        if isinstance(obj, h5py.Dataset):
            found[name] = obj[()]

    group.visititems(collect)
    return found


class TestExactM2RunFile:
    def test_the_run_file_records_what_ran_and_how(self, exact_m2_run: Path) -> None:
        with h5py.File(exact_m2_run) as f:
            attrs = dict(f.attrs)
        assert attrs["run"] == "tiny_ExactM2"
        assert attrs["model"] == "ExactM2"
        assert attrs["seed"] == SEED
        assert attrs["n_params"] == N_PARAMS["ExactM2"]
        assert attrs["ssvae_version"] == ssvae.__version__
        assert attrs["torch_version"] == str(torch.__version__)
        assert attrs["device"] == "cpu"
        assert attrs["cuda_version"] == (torch.version.cuda or "none")
        assert (attrs["step_compiled"], attrs["step_captured"]) == (False, False)
        assert attrs["compile_fallback"] == ""
        assert json.loads(attrs["config"]) == dataclasses.asdict(tiny_config("ExactM2"))

    def test_epochs_of_each_split(self, exact_m2_run: Path) -> None:
        with h5py.File(exact_m2_run) as f:
            assert f["train/epoch"][()].tolist() == [0, 1]
            assert f["valid/epoch"][()].tolist() == [0, 1]
            assert f["test/epoch"][()].tolist() == [1]

    def test_every_train_metric_is_finite_once_per_epoch(self, exact_m2_run: Path) -> None:
        with h5py.File(exact_m2_run) as f:
            train_metrics = datasets(f["train"])
        assert set(train_metrics) >= VAE_TRAIN_METRICS
        for name in VAE_TRAIN_METRICS:
            assert train_metrics[name].shape == (2,), name
            assert np.isfinite(train_metrics[name]).all(), name
        np.testing.assert_allclose(train_metrics["hyperparameters/lr"], [5e-4, 5e-4 / 1.0005])
        # The clipped norm is float32, so it may exceed the float64 threshold by a rounding step.
        max_grad_norm = 2.5 * N_PARAMS["ExactM2"] / 1000
        assert (train_metrics["gnorm"] <= max_grad_norm * (1 + 1e-6)).all()

    def test_validation_accuracy_is_a_fraction(self, exact_m2_run: Path) -> None:
        with h5py.File(exact_m2_run) as f:
            accuracy = f["valid/accuracy"][()]
        assert accuracy.shape == (2,)
        assert ((accuracy >= 0) & (accuracy <= 1)).all()

    def test_z_statistics_and_samples(self, exact_m2_run: Path) -> None:
        with h5py.File(exact_m2_run) as f:
            assert f["z_stats/mu_last_batch"].shape == (2, 100, 50)
            assert f["z_stats/logcov2_last_batch"].shape == (2, 100, 50)
            assert f["z_stats/kl_per_dim_mean"].shape == (2, 50)
            samples = f["samples/p(x)"]
            assert samples.shape == (2, 1000, 784)
            assert samples.dtype == np.uint8

    def test_read_history_returns_what_the_file_holds(self, exact_m2_run: Path) -> None:
        history = runfile.read_history(exact_m2_run)
        assert set(history) == set(runfile.SPLITS)
        with h5py.File(exact_m2_run) as f:
            for split in runfile.SPLITS:
                stored = datasets(f[split])
                assert set(history[split]) == set(stored)
                for name, values in stored.items():
                    np.testing.assert_array_equal(history[split][name], values, err_msg=name)


def test_the_mlp_run_file_has_no_decoder_groups_and_its_own_count(mlp_run: Path) -> None:
    with h5py.File(mlp_run) as f:
        assert "z_stats" not in f
        assert "samples" not in f
        assert f.attrs["n_params"] == N_PARAMS["MLP"]
        for name in ("classifier", "accuracy", "loss"):
            assert f[f"train/{name}"].shape == (2,), name
        accuracy = f["valid/accuracy"][()]
    assert ((accuracy >= 0) & (accuracy <= 1)).all()


@pytest.mark.parametrize(
    ("model", "params", "expected"),
    [("GumbelSoftmaxM2", {"sharpening": 3.0}, {}), ("LogGamma", {"sharpening": 1.0},
                                                     {"hyperparameters/betaprior": [0.2, 0.2]})],
)  # fmt: skip
def test_logged_hyperparameters_are_the_original_ones(
    model, params, expected, small_mnist: Path, small_split: Path, tmp_path: Path
) -> None:
    """hyperparameters/sharpening is the annealed value the step uses, the run's sharpening times
    the multiplier, as an epoch mean: steps 1-2 (epoch 0) use 1 and 0.5, steps 3-4 (epoch 1)
    1.005 and 1 (docs/original.md 4.5)."""
    out = tmp_path / "run.h5"
    train_quietly(tiny_config(model, params=params), small_mnist, small_split, out)
    history = runfile.read_history(out)["train"]
    s = params["sharpening"]
    np.testing.assert_allclose(history["hyperparameters/annealing/sharpening"], [0.75, 1.0025])
    np.testing.assert_allclose(history["hyperparameters/sharpening"], [0.75 * s, 1.0025 * s])
    for name, values in expected.items():
        np.testing.assert_allclose(history[name], values)
    if model == "LogGamma":
        assert "p(x,y)/nllY" in history  # its own label likelihood


@pytest.mark.parametrize(
    "run_config",
    ['{"run": "r", "model": "NoSuchModel", "seed": 3}', '{"run": "r", "model": '],
    ids=["unknown-model", "invalid-json"],
)
def test_cli_rejects_a_bad_run_config(
    run_console_script, small_mnist: Path, small_split: Path, tmp_path: Path, run_config: str
) -> None:
    out = tmp_path / "run.h5"
    result = run_console_script(
        "ssvae-train",
        *("--data", str(small_mnist), "--split", str(small_split), "--out", str(out)),
        *("--run-config", run_config, "--device", "cpu"),
    )
    assert result.returncode != 0
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("ssvae-train: error:")
    assert not out.exists()


def test_split_of_another_seed_is_refused(small_mnist: Path, tmp_path: Path) -> None:
    other_seed_split = split_file(small_mnist, tmp_path, seed=SEED + 1)
    out = tmp_path / "run.h5"
    with pytest.raises(ConfigError, match="seed"):
        train_quietly(tiny_config("MLP"), small_mnist, other_seed_split, out)
    assert not out.exists()


def test_non_finite_objective_stops_the_run_and_keeps_the_epochs_before(
    monkeypatch, small_mnist: Path, small_split: Path, tmp_path: Path
) -> None:
    training_steps = itertools.count(1)
    forward = MLP.forward

    def forward_with_nan_at_step_3(self, *args):
        result = forward(self, *args)
        if self.training and next(training_steps) == 3:
            return dataclasses.replace(result, objective=result.objective * float("nan"))
        return result

    monkeypatch.setattr(MLP, "forward", forward_with_nan_at_step_3)
    out = tmp_path / "run.h5"
    # Steps 1-2 are epoch 0 and steps 3-4 epoch 1.
    with pytest.raises(TrainingDiverged) as raised:
        train_quietly(tiny_config("MLP"), small_mnist, small_split, out)
    message = str(raised.value)
    assert "tiny_MLP" in message
    assert f"seed {SEED}" in message
    assert "epoch 1" in message
    assert "step 3" in message
    assert not out.exists()
    kept = diverged_path(out)
    assert str(kept) in message
    assert runfile.read_attrs(kept)["status"] == "diverged"
    history = runfile.read_history(kept)
    assert history["train"]["epoch"].tolist() == [0]
    assert history["valid"]["epoch"].tolist() == [0]


def stacked_layer() -> tuple[SeedLinear, torch.Tensor]:
    """A linear layer of 3 seeds with random weights, and an input for it."""
    generator = torch.Generator().manual_seed(0)
    layer = SeedLinear(3, 5, 4).double()
    with torch.no_grad():
        for param in layer.parameters():
            param.copy_(torch.randn(param.shape, generator=generator, dtype=torch.float64))
    return layer, torch.randn(3, 6, 5, generator=generator, dtype=torch.float64)


def test_l2_term_adds_what_autograd_gives_for_each_seeds_penalty() -> None:
    layer, x = stacked_layer()
    params = list(layer.parameters())
    penalties = sum(p.square().flatten(1).sum(1) for p in params)  # (seeds,)
    (layer(x).square().sum() + 0.1 * penalties.sum()).backward()
    expected = [p.grad.clone() for p in params]

    layer.zero_grad()
    layer(x).square().sum().backward()
    norms = add_l2_term(params, 0.1)
    for param, grad in zip(params, expected, strict=True):
        torch.testing.assert_close(param.grad, grad)
    torch.testing.assert_close(norms.square(), penalties.detach())


@pytest.mark.parametrize("max_norm", [0.5, 1e6])
def test_each_seed_is_clipped_by_its_own_norm_as_torch_clips_one(max_norm: float) -> None:
    """torch's clip_grad_norm_ on one seed's gradients: factor min(max_norm / (norm + 1e-6), 1)."""
    layer, x = stacked_layer()
    (layer(x).square() * torch.tensor([1.0, 10.0, 100.0]).view(3, 1, 1)).sum().backward()
    params = list(layer.parameters())
    expected_norms, expected_grads = [], []
    for seed in range(3):
        grads = [p.grad[seed].clone() for p in params]
        norm = torch.linalg.vector_norm(torch.cat([g.flatten() for g in grads]))
        factor = (max_norm / (norm + 1e-6)).clamp(max=1.0)
        expected_norms.append(norm)
        expected_grads.append([g * factor for g in grads])
    norms = clip_grad_norms(params, max_norm)
    torch.testing.assert_close(norms, torch.stack(expected_norms))
    for seed, grads in enumerate(expected_grads):
        for param, grad in zip(params, grads, strict=True):
            torch.testing.assert_close(param.grad[seed], grad)
    assert norms.unique().numel() == 3  # three different norms: each seed is clipped by its own


@pytest.mark.parametrize("flush", ["on", "off"])
def test_cpu_training_flushes_subnormals_on_every_thread(flush: str) -> None:
    """Subnormal inputs stall CPU matmuls; ssvae-train's compute options make them zero in the
    whole process, worker threads included (a fresh process: threads inherit it as they start)."""
    code = f"""
import argparse, torch
from ssvae import compute
options = argparse.Namespace(device="cpu", threads=2, compile="off", tf32="off",
                             flush_subnormals="{flush}")
compute.apply_compute_options(options)
x = torch.full((1024, 1024), 3e-39)  # float32 subnormals, in chunks over both threads
elementwise = torch.count_nonzero(x * 0.5)
matmul = torch.count_nonzero(torch.mm(x, torch.eye(1024)))
print(int(elementwise), int(matmul))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    elementwise, matmul = map(int, result.stdout.split())
    expected = 0 if flush == "on" else 1024 * 1024
    assert (elementwise, matmul) == (expected, expected)
