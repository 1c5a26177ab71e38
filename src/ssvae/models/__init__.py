"""The models of the comparison, by the name a run's config gives."""

from ssvae.models.base import Model, SemiSupervisedVAE
from ssvae.models.exact_m2 import ExactM2
from ssvae.models.mlp import MLP

MODELS: dict[str, type[Model]] = {"ExactM2": ExactM2, "MLP": MLP}


def build_model(
    name: str, params: dict, input_dropout: float, classifier_weight: float, z_noise_std: float
) -> Model:
    cls = MODELS[name]
    settings = cls.resolve_params(params)
    if issubclass(cls, SemiSupervisedVAE):
        model = cls(input_dropout, classifier_weight, z_noise_std, **settings)
    else:
        model = cls(input_dropout, classifier_weight)
    model.reset_parameters()
    return model
