"""The compiled step (on CPU here): the eager step's random draws, BatchNorm updates and numbers,
and a fallback to eager, with the same numbers, when compiling fails."""

from pathlib import Path

import numpy as np
import pytest
import torch
import torch._dynamo
from labeled_split import SPLIT_SEED

from ssvae import compute, job, runfile, step
from ssvae.compute import GUARDED_CALLS, error_summary
from ssvae.config import TrainConfig
from ssvae.data import load as load_arrays
from ssvae.images import load_images, seed_images
from ssvae.splits import read_split

CPU = torch.device("cpu")
# Every way a step draws random numbers: binarisation and dropout masks (rand_like), the
# labeled minibatch (randint), Gumbel noise (rand), sampled y (multinomial), Gaussian z noise.
# Every draw of a step goes through one of these, with a seed's own generator (ssvae.nn).
RANDOM_DRAWS = ("rand", "randn", "randint")


def short_config(model: str, **overrides) -> TrainConfig:
    settings = {"epochs": 1, "steps_per_epoch": 3, "eval_every": 1, "batch_size": 20}
    params = {"sharpening": 3.0} if model == "GumbelSoftmaxM2" else {}
    return TrainConfig(
        run=f"short_{model}", model=model, seed=SPLIT_SEED, params=params, **settings | overrides
    )


def quiet(*args, **kwargs) -> None:
    pass


@pytest.mark.parametrize("model", ["MLP", "ApproxM2"])
def test_compiled_step_gives_the_eager_numbers(
    model: str, small_mnist: Path, small_split: Path, tmp_path: Path, float64_default
) -> None:
    """torch.compile (on CPU here; CUDA graphs on CUDA) changes how the step runs, not what it
    computes: the same random draws, the same numbers up to rounding.

    The tolerance follows from rounding, not from one CPU. Compiled kernels fuse and reorder
    sums, so each metric carries a relative error of about kappa * u, u the unit roundoff and
    kappa its condition: KL_Y, the small difference of terms near log(10), alone contributes a
    factor of about 300, and three training steps and a network's depth multiply it further
    (measured: about 1e3 on an AMD CPU, twice that on an Intel one). In float32 (u = 6e-8) that
    is 1e-4, which no tolerance can separate from a real difference with confidence; in float64
    (u = 1.1e-16) even kappa = 1e6 stays below 1e-10, while another random draw or a skipped
    BatchNorm update changes these metrics by more than 1e-3. So both run in float64 and must
    agree to 1e-8."""
    cfg = short_config(model)
    histories = {}
    for compiled in (False, True):
        out = tmp_path / f"compiled_{compiled}.h5"
        job.train(cfg, small_mnist, small_split, out, CPU, log=quiet, compiled=compiled)
        attrs = runfile.read_attrs(out)
        assert (attrs["compile_requested"], attrs["step_compiled"]) == (compiled, compiled)
        assert attrs["compile_fallback"] == ""
        histories[compiled] = runfile.read_history(out)
    for split in ("train", "valid", "test"):
        eager, compiled = histories[False][split], histories[True][split]
        assert set(eager) == set(compiled)
        for name in eager:
            if name != "duration":
                np.testing.assert_allclose(compiled[name], eager[name], rtol=1e-8, err_msg=name)


def replay_steps(cfg: TrainConfig, data: Path, split: Path, compiled: bool, monkeypatch):
    """Train cfg.steps_per_epoch steps one at a time; after each, every random tensor the step
    drew (in order), every BatchNorm buffer, the generator's state and the metric sums."""
    drawn = []

    def recording(name: str):
        draw = getattr(torch, name)

        def recorded_draw(*args, **kwargs):
            out = draw(*args, **kwargs)
            drawn.append((name, out))  # dynamo replays this side effect after the graph
            return out

        return recorded_draw

    for name in RANDOM_DRAWS:
        monkeypatch.setattr(torch, name, recording(name))
    images = load_images(load_arrays(data), [read_split(split)], CPU)
    model, optimizer = step.build_training(cfg, [cfg.seed], CPU)
    step_fn = step.training_step(model, images, compiled, log=quiet)
    progress = step.EpochProgress.start(0, images, model.random)
    steps = []
    for target in range(1, cfg.steps_per_epoch + 1):
        drawn.clear()
        step.train_steps(model, optimizer, step_fn, images, cfg, progress, until=target)
        steps.append(
            {
                "drawn": [(name, tensor.detach().clone()) for name, tensor in drawn],
                "buffers": {name: b.clone() for name, b in model.named_buffers()},
                "rng": model.random.get_state(),
                "sums": progress.sums.clone(),
            }
        )
    monkeypatch.undo()
    assert step_fn.compiled == compiled
    return steps


@pytest.mark.parametrize("model", ["GumbelSoftmaxM2", "ApproxM2"])
def test_compiled_step_draws_what_the_eager_step_draws(
    model: str, small_mnist, small_split, float64_default, monkeypatch
) -> None:
    """Step by step, compiled against eager: each random tensor (the random ops are torch's own,
    so their values are exact), each BatchNorm running mean, variance and batch count (rounding
    only, float64: see the test above), and the generator left in the same state."""
    cfg = short_config(model, z_noise_std=0.1)
    eager = replay_steps(cfg, small_mnist, small_split, False, monkeypatch)
    compiled = replay_steps(cfg, small_mnist, small_split, True, monkeypatch)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0  # it did compile
    drawn_kinds = {name for step in eager for name, _ in step["drawn"]}
    assert drawn_kinds == {"rand", "randn", "randint"}
    for i, (e, c) in enumerate(zip(eager, compiled, strict=True)):
        assert [name for name, _ in c["drawn"]] == [name for name, _ in e["drawn"]], i
        for (name, ce), (_, ee) in zip(c["drawn"], e["drawn"], strict=True):
            torch.testing.assert_close(ce, ee, rtol=0, atol=0, msg=f"step {i}: {name}")
        assert c["buffers"].keys() == e["buffers"].keys()
        assert any("running_mean" in name for name in e["buffers"])
        for name, buffer in e["buffers"].items():
            torch.testing.assert_close(
                c["buffers"][name], buffer, rtol=1e-8, atol=0, msg=f"step {i}: {name}"
            )
        for compiled_state, eager_state in zip(c["rng"], e["rng"], strict=True):
            assert torch.equal(compiled_state, eager_state), f"step {i}: generator state"
        torch.testing.assert_close(c["sums"], e["sums"], rtol=1e-8, atol=0)


def failing_at_compile(graph, example_inputs):
    raise RuntimeError("inductor: C++ compiler not found\n(more detail)")


def failing_after_running(graph, example_inputs):
    """A compiled graph that runs (drawing random numbers, updating BatchNorm buffers) and then
    fails, as a CUDA graph capture that the driver refuses does."""

    def run(*args):
        graph(*args)
        raise RuntimeError("CUDA error: operation not permitted when stream is capturing")

    return run


@pytest.mark.parametrize("backend", [failing_at_compile, failing_after_running])
def test_a_step_that_fails_to_compile_trains_eagerly(
    backend, small_mnist, small_split, tmp_path, monkeypatch
) -> None:
    """One log line saying why, then the eager run's numbers exactly: whatever the failed call
    drew or updated is put back first."""
    compile_with = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, mode=None: compile_with(fn, backend=backend))
    cfg = short_config("ApproxM2")
    lines = []
    fallback_out = tmp_path / "fallback.h5"
    job.train(cfg, small_mnist, small_split, fallback_out, CPU,
                log=lambda line, **kwargs: lines.append(line), compiled=True)  # fmt: skip
    eager_out = tmp_path / "eager.h5"
    job.train(cfg, small_mnist, small_split, eager_out, CPU, log=quiet, compiled=False)

    failures = [line for line in lines if "compiling the step failed" in line]
    assert len(failures) == 1
    assert failures[0].endswith("; training eagerly")
    assert "RuntimeError" in failures[0] and "\n" not in failures[0]
    attrs = runfile.read_attrs(fallback_out)
    assert attrs["compile_requested"]  # what was asked for
    assert (attrs["step_compiled"], attrs["step_captured"]) == (False, False)
    assert attrs["compile_fallback"] in failures[0]
    fallback, eager = runfile.read_history(fallback_out), runfile.read_history(eager_out)
    for split in ("train", "valid", "test"):
        for name in eager[split]:
            if name != "duration":
                np.testing.assert_array_equal(fallback[split][name], eager[split][name], name)


def test_a_failure_after_the_guarded_calls_is_not_hidden(
    small_mnist, small_split, monkeypatch
) -> None:
    """Past the calls in which compiling happens, an error is a real one and stops training."""

    def compiled_then_failing(forward, on_cuda):
        calls = []

        def compiled_forward(*args):
            calls.append(args)
            if len(calls) > GUARDED_CALLS:
                raise RuntimeError("out of memory")
            return forward(*args)

        return compiled_forward

    monkeypatch.setattr(compute, "compile_forward", compiled_then_failing)
    cfg = short_config("MLP")
    images = load_images(load_arrays(small_mnist), [read_split(small_split)], CPU)
    model, _ = step.build_training(cfg, [cfg.seed], CPU)
    step_fn = step.training_step(model, images, compiled=True, log=quiet)
    index = torch.arange(20).unsqueeze(0)
    coefficients = step.annealing_coefficients(0, cfg, CPU)[0]
    for _ in range(GUARDED_CALLS):
        step_fn(index, coefficients)
    with pytest.raises(RuntimeError, match="out of memory"):
        step_fn(index, coefficients)
    assert step_fn.compiled


def test_error_summary_names_the_root_cause() -> None:
    try:
        try:
            raise ValueError("no kernel for dtype\nlong traceback text")
        except ValueError as root:
            raise RuntimeError("backend='inductor' raised:") from root
    except RuntimeError as error:
        summary = error_summary(error)
    assert summary == "RuntimeError from ValueError: no kernel for dtype"


def graph_breaks(model: str, n_seeds: int, data: Path) -> list[str]:
    """Why torch.compile breaks the graph of a step of `n_seeds` seeds trained together, one
    reason per break (traced by dynamo alone: nothing is compiled)."""
    seeds = list(range(1, n_seeds + 1))
    images = seed_images(data, seeds, CPU)
    cfg = short_config(model)
    training = step.Training.start(cfg, images, seeds, CPU)
    index = torch.arange(cfg.batch_size).expand(n_seeds, -1)
    coefficients = step.annealing_coefficients(0, cfg, CPU)[-1]
    forward = training.step_fn.forward
    explained = torch._dynamo.explain(forward)(index, coefficients)
    return sorted(reason.reason.splitlines()[0] for reason in explained.break_reasons)


@pytest.mark.parametrize("model", ["ExactM2", "MLP"])
def test_seeds_trained_together_break_the_compiled_graph_where_one_seed_does(
    model: str, small_mnist: Path
) -> None:
    # Each break is a separate graph (on CUDA, a separate CUDA graph and a return to Python):
    # a pack's layout must not add any. The breaks one seed has are its random draws, each from
    # its seed's own torch.Generator, which dynamo does not trace.
    alone = graph_breaks(model, 1, small_mnist)
    assert alone
    assert graph_breaks(model, 2, small_mnist) == alone
