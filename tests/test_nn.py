"""ssvae.nn: BatchNorm per sub-graph, maxout stacks, networks, init and the basic terms
(docs/original.md 2)."""

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.distributions import Categorical, Normal, kl_divergence

from ssvae.nn import (
    ClassifierNet,
    Decoder,
    Maxout,
    MaxoutStack,
    SeedRandom,
    Subgraph,
    SubgraphBatchNorm,
    ZEncoder,
    bernoulli_draw,
    bernoulli_nll,
    categorical_draw,
    categorical_kl_uniform,
    gaussian_kl,
    init_uniform_,
    input_dropout,
)

BN_EPS = 1e-3
BN_MOMENTUM = 0.05
WIDTH = 6
SEEDS = 2  # the layers below hold two seeds' weights, each tested against its own data


def n_params(module: nn.Module) -> int:
    """Parameters per seed."""
    return sum(p[0].numel() for p in module.parameters())


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.fixture
def bn() -> SubgraphBatchNorm:
    layer = SubgraphBatchNorm(SEEDS, WIDTH).double()
    init_uniform_(layer, SeedRandom(range(SEEDS)))
    return layer


def normalised(bn: SubgraphBatchNorm, x: torch.Tensor, mean, var) -> torch.Tensor:
    """Each seed's rows of x normalised with that seed's mean and var (seeds, width)."""
    mean, var = mean.unsqueeze(1), var.unsqueeze(1)
    return bn.gamma.unsqueeze(1) * (x - mean) / torch.sqrt(var + BN_EPS) + bn.beta.unsqueeze(1)


def running_stats(bn: SubgraphBatchNorm, subgraph: Subgraph):
    return bn.running_mean[:, subgraph], bn.running_var[:, subgraph]


# Shifted and scaled so that batch statistics are far from the initial running stats (0, 1);
# each seed's rows are different data.
def batch(seed: int, rows: int = 8) -> torch.Tensor:
    return 3.0 + 2.0 * randn(SEEDS, rows, WIDTH, seed=seed)


class TestSubgraphBatchNorm:
    def test_training_output_uses_biased_batch_variance(self, bn) -> None:
        x = batch(seed=1)
        expected = normalised(bn, x, x.mean(1), x.var(1, unbiased=False))
        torch.testing.assert_close(bn(x, Subgraph.LABELED), expected)

    def test_gradient_flows_through_the_batch_statistics(self, bn) -> None:
        # Each normalised column sums to zero whatever x is, so d(sum y)/dx vanishes only when
        # the gradient also flows through the batch mean.
        x = batch(seed=1).requires_grad_()
        bn(x, Subgraph.LABELED).sum().backward()
        torch.testing.assert_close(x.grad, torch.zeros_like(x), atol=1e-10, rtol=0)

    def test_first_update_copies_batch_mean_and_unbiased_variance(self, bn) -> None:
        x = batch(seed=1)
        bn(x, Subgraph.LABELED)
        mean, var = running_stats(bn, Subgraph.LABELED)
        torch.testing.assert_close(mean, x.mean(1))
        torch.testing.assert_close(var, x.var(1, unbiased=True))

    def test_later_updates_blend_with_momentum(self, bn) -> None:
        first, second = batch(seed=1), batch(seed=2)
        bn(first, Subgraph.LABELED)
        bn(second, Subgraph.LABELED)
        mean, var = running_stats(bn, Subgraph.LABELED)
        keep = 1 - BN_MOMENTUM
        torch.testing.assert_close(mean, keep * first.mean(1) + BN_MOMENTUM * second.mean(1))
        torch.testing.assert_close(var, keep * first.var(1) + BN_MOMENTUM * second.var(1))

    def test_other_subgraphs_statistics_are_untouched(self, bn) -> None:
        bn(batch(seed=1), Subgraph.LABELED)
        for other in (Subgraph.UNLABELED, Subgraph.CLASSIFIER):
            mean, var = running_stats(bn, other)
            torch.testing.assert_close(mean, torch.zeros(SEEDS, WIDTH, dtype=torch.float64))
            torch.testing.assert_close(var, torch.ones(SEEDS, WIDTH, dtype=torch.float64))
            assert not bn.updated[:, other].any()
        assert bn.updated[:, Subgraph.LABELED].all()

    def test_eval_uses_the_named_subgraphs_running_statistics(self, bn) -> None:
        bn(batch(seed=1), Subgraph.LABELED)
        bn(batch(seed=2) * 5.0, Subgraph.CLASSIFIER)
        bn.eval()
        x = batch(seed=3, rows=4)
        for subgraph in (Subgraph.LABELED, Subgraph.CLASSIFIER):
            expected = normalised(bn, x, *running_stats(bn, subgraph))
            torch.testing.assert_close(bn(x, subgraph), expected)
        assert not torch.allclose(bn(x, Subgraph.LABELED), bn(x, Subgraph.CLASSIFIER))

    def test_affine_parameters_are_shared_by_all_subgraphs(self, bn) -> None:
        assert len(list(bn.parameters())) == 2
        assert n_params(bn) == 2 * WIDTH


class TestMaxoutStack:
    @staticmethod
    def reference_layer(linear: nn.Module, h: torch.Tensor) -> torch.Tensor:
        """Each seed's linear layer by hand, then out[..., j] = max of pre[..., j + k*H] over
        k = 0..3."""
        pre = torch.stack([h[s] @ linear.weight[s] + linear.bias[s] for s in range(len(h))])
        width = pre.shape[-1] // 4
        pieces = [pre[..., [j + k * width for k in range(4)]] for j in range(width)]
        return torch.stack([piece.max(-1).values for piece in pieces], -1)

    def test_maxout_over_four_units_a_width_apart(self) -> None:
        stack = MaxoutStack(SEEDS, 7, 5, n_layers=2, batchnorm=False).double()
        init_uniform_(stack, SeedRandom(range(SEEDS)))
        x = randn(SEEDS, 3, 7)
        first, second = stack.linears
        expected = self.reference_layer(second, self.reference_layer(first, x))
        torch.testing.assert_close(stack(x), expected)

    def test_maxout_gradient_matches_finite_differences(self) -> None:
        pieces = randn(3, 4, 5).requires_grad_()
        assert torch.autograd.gradcheck(Maxout.apply, (pieces,))

    def test_maxout_gradient_goes_to_every_tied_max_as_in_theano(self) -> None:
        pieces = torch.tensor([[[1.0], [3.0], [3.0], [-2.0]]], dtype=torch.float64)
        pieces.requires_grad_()
        Maxout.apply(pieces).sum().backward()
        assert pieces.grad.flatten().tolist() == [0.0, 1.0, 1.0, 0.0]

    def test_stack_without_batchnorm_has_only_linear_layers(self) -> None:
        stack = MaxoutStack(SEEDS, 7, 5, n_layers=2, batchnorm=False)
        assert not any(isinstance(m, SubgraphBatchNorm) for m in stack.modules())
        assert n_params(stack) == (7 * 20 + 20) + (5 * 20 + 20)

    def test_zero_layers_is_the_identity(self) -> None:
        x = randn(SEEDS, 3, 7)
        torch.testing.assert_close(MaxoutStack(SEEDS, 7, 5, n_layers=0, batchnorm=True)(x), x)


class TestParameterCounts:
    """The breakdown in docs/original.md 2.5, which fixes the clipping threshold."""

    def test_classifier_network_has_the_originals_parameter_count(self) -> None:
        net = ClassifierNet(SeedRandom([0]), dropout=0.25)
        assert n_params(net.trunk) == 2_035_200
        assert n_params(net.head) == 727_200
        assert [n_params(output) for output in net.outputs] == [3_010]

    def test_z_encoder_has_the_originals_parameter_count(self) -> None:
        assert n_params(ZEncoder(SEEDS)) == 1_120_600

    def test_decoder_has_the_originals_parameter_count(self) -> None:
        assert n_params(Decoder(SEEDS)) == 688_784


def networks(seeds: list[int]) -> nn.ModuleList:
    random = SeedRandom(seeds)
    modules = nn.ModuleList([ClassifierNet(random, dropout=0.25), ZEncoder(len(seeds))])
    init_uniform_(modules, random)
    return modules


def test_init_uniform_draws_every_parameter_from_the_init_range() -> None:
    networks = nn.ModuleList(
        [ClassifierNet(SeedRandom([0]), dropout=0.25), ZEncoder(1), Decoder(1)]
    )
    init_uniform_(networks, SeedRandom([0]))
    for name, param in networks.named_parameters():
        assert param.min() >= -0.1, name
        assert param.max() <= 0.1, name
        assert param.max() > param.min(), f"{name} is constant"
    bn_gammas = [m.gamma for m in networks.modules() if isinstance(m, SubgraphBatchNorm)]
    assert bn_gammas, "the inference networks use BatchNorm"


def test_each_seeds_weights_come_from_its_own_stream_alone_or_in_a_pack() -> None:
    pack, alone = networks([3, 7]), networks([7])
    for (name, packed), single in zip(pack.named_parameters(), alone.parameters(), strict=True):
        assert torch.equal(packed[1], single[0]), name
        assert not torch.equal(packed[0], packed[1]), name


class TestDraws:
    def test_each_seeds_draws_are_its_own_whatever_seeds_draw_beside_it(self) -> None:
        pack, alone = SeedRandom([3, 7]), SeedRandom([7])
        like = torch.zeros(2, 50)
        for draw in ("rand_like", "randn_like"):
            packed, single = getattr(pack, draw)(like), getattr(alone, draw)(like[:1])
            assert packed.shape == (2, 50)
            assert torch.equal(packed[1], single[0])
            assert not torch.equal(packed[0], packed[1])
        assert torch.equal(pack.randperm(30)[1], alone.randperm(30)[0])
        assert torch.equal(pack.randint(10, (40,))[1], alone.randint(10, (40,))[0])
        concentration = torch.full((2, 40), 0.7)
        assert torch.equal(pack.gamma(concentration)[1], alone.gamma(concentration[:1])[0])

    def test_a_stream_resumes_from_its_saved_state(self) -> None:
        random = SeedRandom([3, 7])
        state = random.get_state()
        first = random.rand_like(torch.zeros(2, 10))
        random.set_state(state)
        assert torch.equal(random.rand_like(torch.zeros(2, 10)), first)

    def test_bernoulli_draw_is_zero_or_one_with_the_given_probabilities(self) -> None:
        p = torch.tensor([0.0, 0.2, 0.5, 0.9, 1.0]).repeat(1, 20_000, 1)
        draws = bernoulli_draw(p, p, SeedRandom([0]))
        assert draws.dtype == torch.float32
        assert set(draws.unique().tolist()) == {0.0, 1.0}
        # 20,000 draws: the standard error of a mean is at most 0.0036
        torch.testing.assert_close(draws.mean(1)[0], p[0, 0], atol=0.015, rtol=0)

    def test_categorical_draw_follows_the_probabilities(self) -> None:
        probs = torch.tensor([0.1, 0.0, 0.6, 0.3]).repeat(1, 20_000, 1)
        drawn = categorical_draw(probs, SeedRandom([0]))
        counts = torch.bincount(drawn.flatten(), minlength=4) / 20_000
        # standard error at most 0.0035; class 1 has probability 0 and is never drawn
        torch.testing.assert_close(counts, probs[0, 0], atol=0.015, rtol=0)
        assert counts[1] == 0

    def test_categorical_draw_of_a_diverged_seed_is_a_class_not_an_error(self) -> None:
        probs = torch.full((2, 5, 10), 0.1)
        probs[0] = float("nan")
        drawn = categorical_draw(probs, SeedRandom([1, 2]))
        assert ((drawn >= 0) & (drawn < 10)).all()

    def test_input_dropout_keeps_three_quarters_scaled_up(self) -> None:
        random = SeedRandom([0])
        x = torch.full((1, 400, 784), 0.6)
        dropped = input_dropout(x, 0.25, True, random)
        assert dropped.unique().tolist() == pytest.approx([0.0, 0.8])
        assert (dropped > 0).float().mean().item() == pytest.approx(0.75, abs=0.005)
        assert input_dropout(x, 0.25, False, random) is x


class TestBasicTerms:
    def test_gaussian_kl_matches_torch_distributions(self) -> None:
        mu, logcov2 = randn(5, 50, seed=1), 2.0 * randn(5, 50, seed=2)
        expected = kl_divergence(Normal(mu, torch.exp(0.5 * logcov2)), Normal(0.0, 1.0))
        torch.testing.assert_close(gaussian_kl(mu, logcov2), expected)

    @pytest.mark.parametrize("scale", [1.0, 30.0])
    def test_categorical_kl_uniform_matches_torch_distributions(self, scale: float) -> None:
        logits = scale * torch.tanh(randn(6, 10, seed=3))
        logits[0] = torch.tensor([30.0] + [-30.0] * 9, dtype=torch.float64)
        uniform = Categorical(probs=torch.full((10,), 0.1, dtype=torch.float64))
        expected = kl_divergence(Categorical(logits=logits), uniform)
        got = categorical_kl_uniform(logits)
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, expected)
        assert got[0].item() == pytest.approx(math.log(10), rel=1e-9)

    def test_bernoulli_nll_matches_a_float64_formula(self) -> None:
        logits = 10.0 * randn(4, 784, seed=4)
        logits[0, :4] = torch.tensor([30.0, -30.0, 30.0, -30.0], dtype=torch.float64)
        x = (randn(4, 784, seed=5) > 0).double()
        x[0, :4] = torch.tensor([1.0, 0.0, 0.0, 1.0], dtype=torch.float64)
        # log p = -log(1 + e^-l) and log(1 - p) = -log(1 + e^l), stable through logaddexp
        lg, xs = logits.numpy(), x.numpy()
        log_p, log_not_p = -np.logaddexp(0.0, -lg), -np.logaddexp(0.0, lg)
        expected = -(xs * log_p + (1 - xs) * log_not_p).sum(1)
        got = bernoulli_nll(logits, x)
        assert torch.isfinite(got).all()
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12)
        assert got[0].item() > 60.0  # the two confidently wrong pixels cost about 30 nats each


def test_logits_are_clipped_with_zero_gradient_outside() -> None:
    net = ClassifierNet(SeedRandom([0]), dropout=0.0).double()
    init_uniform_(net, net.random)
    output = net.outputs[0]
    raw_logits = torch.tensor([-9.0, -6.0, -4.5, -2.0, 0.0, 1.0, 3.0, 4.9, 5.5, 12.0])
    with torch.no_grad():
        output.weight.zero_()
        output.bias.copy_(raw_logits)
    hx = randn(1, 4, 300)
    (logits,) = net.heads(hx, Subgraph.CLASSIFIER)
    torch.testing.assert_close(logits, raw_logits.double().clamp(-5, 5).expand(1, 4, 10))
    logits.sum().backward()
    inside = (raw_logits.abs() < 5).double()
    torch.testing.assert_close(output.bias.grad, 4 * inside.unsqueeze(0))
