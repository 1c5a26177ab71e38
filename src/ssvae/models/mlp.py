"""MLP: the q(y|x) network alone, trained on the 100 labeled images (docs/original.md 3.9)."""

from ssvae.models.base import Model, StepResult


class MLP(Model):
    def forward(self, x_unlabeled, x_labeled, y_labeled, annealing) -> StepResult:
        # No annealing: the original's MLP has no annealing variables at all.
        ce, metrics = self.classifier_terms(x_labeled, y_labeled, annealing)
        metrics["loss"] = metrics["classifier"]
        return StepResult(self.classifier_weight * ce, metrics)
