"""Annealing and learning-rate schedules as functions of the step or epoch (docs/original.md 4.2,
4.5)."""

from dataclasses import dataclass


def ramp(step: int, n_steps: int) -> float:
    """The coefficient used at 1-based `step` by an anneal over `n_steps` steps.

    The original updates its coefficients after each step from the old counter, so step 1 sees the
    initial value 0 and step k >= 2 sees 0.01 + (k-1)/N, or 1 once (k-1)/N exceeds 1
    (docs/original.md 7.5).
    """
    if step == 1:
        return 0.0
    progress = (step - 1) / n_steps
    return 1.0 if progress > 1 else 0.01 + progress


@dataclass(frozen=True)
class Annealing:
    """The coefficients one training step uses; `sharpening` multiplies each run's sharpening."""

    kl_z: float = 1.0
    kl_alpha: float = 1.0
    bound: float = 1.0
    classifier: float = 1.0
    sharpening: float = 1.0


def annealing(step: int, classifier_steps: int) -> Annealing:
    """Coefficients at 1-based `step` (every anneal but the classifier's is over one step)."""
    # The sharpening variable is rewritten after each step to s*0.5*(1 + the old coefficient).
    sharpening = 1.0 if step == 1 else 0.5 * (1.0 + ramp(step - 1, 1))
    return Annealing(
        kl_z=ramp(step, 1),
        # The original divides by annealKL_Z here too (docs/original.md 7.4); both are 1 in the
        # experiment.
        kl_alpha=ramp(step, 1),
        bound=ramp(step, 1),
        classifier=ramp(step, classifier_steps),
        sharpening=sharpening,
    )


def learning_rate(epoch: int, initial: float, decay: float, floor: float) -> float:
    """The rate epoch `epoch` (0-based) trains with, by the original's rule: after each epoch
    lr <- lr/decay, unless that would fall below `floor` (then it stays)."""
    lr = initial
    for _ in range(epoch):
        if lr / decay < floor:
            break
        lr /= decay
    return lr
