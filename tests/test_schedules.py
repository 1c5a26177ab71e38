"""ssvae.schedules: the annealing coefficients per step and the learning rate per epoch
(docs/original.md 4.2, 4.5)."""

import dataclasses

import pytest

from ssvae.schedules import Annealing, annealing, learning_rate, ramp

CLASSIFIER_STEPS = 50_000
LR, LR_DECAY, LR_FLOOR = 5e-4, 1.0005, 1e-4


def coefficients(step: int) -> dict[str, float]:
    return dataclasses.asdict(annealing(step, CLASSIFIER_STEPS))


def original_learning_rates(n_epochs: int, initial: float, decay: float, floor: float):
    """The original's rule: after every epoch lr <- lr/decay, unless that falls below the floor."""
    rates, lr = [], initial
    for _ in range(n_epochs):
        rates.append(lr)
        if not lr / decay < floor:
            lr = lr / decay
    return rates


class TestAnnealing:
    def test_step_1_sees_the_initial_zero_coefficients(self) -> None:
        assert annealing(1, CLASSIFIER_STEPS) == Annealing(
            kl_z=0.0, kl_alpha=0.0, bound=0.0, classifier=0.0, sharpening=1.0
        )

    def test_step_2_starts_the_ramps_and_halves_the_sharpening(self) -> None:
        assert coefficients(2) == pytest.approx(
            {
                "kl_z": 1.01,
                "kl_alpha": 1.01,
                "bound": 1.01,
                "classifier": 0.01 + 1 / CLASSIFIER_STEPS,
                "sharpening": 0.5,
            }
        )

    def test_step_3_ends_the_one_step_anneals_but_the_sharpening(self) -> None:
        step_3 = coefficients(3)
        assert step_3["sharpening"] == pytest.approx(1.005)
        assert step_3["kl_z"] == step_3["kl_alpha"] == step_3["bound"] == 1.0

    @pytest.mark.parametrize("step", [4, 5, 1000, 150_500])
    def test_one_step_anneals_are_done_from_step_4(self, step: int) -> None:
        later = coefficients(step)
        assert later["sharpening"] == 1.0
        assert later["kl_z"] == later["kl_alpha"] == later["bound"] == 1.0

    def test_classifier_weight_peaks_at_step_50001_then_settles_at_1(self) -> None:
        assert coefficients(50_001)["classifier"] == pytest.approx(1.01)
        assert coefficients(50_002)["classifier"] == 1.0
        assert coefficients(150_500)["classifier"] == 1.0

    def test_classifier_weight_never_decreases_during_the_ramp(self) -> None:
        weights = [annealing(step, CLASSIFIER_STEPS).classifier for step in range(2, 50_002)]
        assert weights[0] == pytest.approx(0.01 + 1 / CLASSIFIER_STEPS)
        assert all(a <= b for a, b in zip(weights, weights[1:], strict=False))

    def test_ramp_over_n_steps(self) -> None:
        assert [ramp(step, 4) for step in range(1, 8)] == pytest.approx(
            [0.0, 0.26, 0.51, 0.76, 1.01, 1.0, 1.0]
        )


class TestLearningRate:
    def test_first_epoch_trains_with_the_initial_rate(self) -> None:
        assert learning_rate(0, LR, LR_DECAY, LR_FLOOR) == LR

    def test_epoch_300_trains_with_the_rate_decayed_300_times(self) -> None:
        rate = learning_rate(300, LR, LR_DECAY, LR_FLOOR)
        assert rate == pytest.approx(LR / LR_DECAY**300, rel=1e-12)
        assert rate == pytest.approx(4.30e-4, abs=5e-7)

    def test_never_below_the_floor(self) -> None:
        assert LR_FLOOR <= learning_rate(10_000, LR, LR_DECAY, LR_FLOOR) < LR_FLOOR * LR_DECAY

    def test_matches_the_original_iterative_rule(self) -> None:
        expected = original_learning_rates(10_000, LR, LR_DECAY, LR_FLOOR)
        got = [learning_rate(epoch, LR, LR_DECAY, LR_FLOOR) for epoch in range(10_000)]
        assert got == pytest.approx(expected, rel=1e-9)

    def test_matches_the_original_rule_when_the_floor_is_reached_exactly(self) -> None:
        initial, decay, floor = 1.0, 10.0, 1e-3
        expected = original_learning_rates(6, initial, decay, floor)
        got = [learning_rate(epoch, initial, decay, floor) for epoch in range(6)]
        assert got == pytest.approx(expected, rel=1e-9)
