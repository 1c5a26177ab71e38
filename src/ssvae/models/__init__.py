"""The models of the comparison, by the name a run's config gives, and what planning needs to
know of each without importing torch: where it is defined and whether it has a decoder. The
settings each model takes are the config schema's (ssvae.config)."""

from dataclasses import dataclass
from importlib import import_module


@dataclass(frozen=True)
class ModelEntry:
    module: str  # in ssvae.models
    # A decoder p(x|y,z): the model learns from the unlabeled images too, and has samples and
    # z statistics to show. The one place this trait is said.
    has_decoder: bool = True


MODELS = {
    "ExactM2": ModelEntry("exact_m2"),
    "ApproxM2": ModelEntry("approx_m2"),
    "GumbelSoftmaxM2": ModelEntry("gumbel_softmax_m2"),
    "STGumbelSoftmaxM2": ModelEntry("gumbel_softmax_m2"),
    "LogisticNormalM2": ModelEntry("logistic_normal_m2"),
    "STLogisticNormalM2": ModelEntry("logistic_normal_m2"),
    "LogisticNormal": ModelEntry("logistic_normal"),
    "LogGamma": ModelEntry("log_gamma"),
    "MLP": ModelEntry("mlp", has_decoder=False),
}


def model_class(name: str) -> type:
    """The class of model `name` (importing it imports torch)."""
    return getattr(import_module(f"ssvae.models.{MODELS[name].module}"), name)
