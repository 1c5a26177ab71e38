"""Building blocks shared by every model (spec section 2): layers, networks and the basic terms.

Every layer holds one set of weights per seed, stacked along a leading seed dimension, and every
tensor flowing through a model is (seeds, batch, features): the seeds of one run train in one
process with one batched matmul per layer (one seed is a pack of one). Seeds share nothing but
shapes: each has its own weights, BatchNorm statistics and random stream.
"""

import math
from enum import IntEnum

import torch
import torch.nn.functional as F
from torch import nn

N_CLASSES = 10
N_PIXELS = 784
Z_DIM = 50
INIT_RANGE = 0.1  # every trainable tensor, BatchNorm gamma and beta included, starts U(-0.1, 0.1)
MAXOUT_PIECES = 4
LOGIT_CLIP = 5.0


class Subgraph(IntEnum):
    """The three sub-graphs: shared weights, separate BatchNorm statistics (docs/original.md
    2.3)."""

    UNLABELED = 0  # p(x)
    LABELED = 1  # p(x,y)
    CLASSIFIER = 2  # q(y|x)


class SubgraphBatchNorm(nn.Module):
    """BatchNorm with one shared affine pair and one set of running statistics per sub-graph,
    per seed.

    As in the original: eps 1e-3, biased batch variance in training, unbiased variance in the
    running estimate, and a first update that copies the batch statistics (momentum 0.05 after).
    """

    def __init__(self, n_seeds: int, width: int, momentum: float = 0.05, eps: float = 1e-3):
        super().__init__()
        self.momentum = momentum
        self.eps = eps
        self.gamma = nn.Parameter(torch.empty(n_seeds, width))
        self.beta = nn.Parameter(torch.empty(n_seeds, width))
        n_subgraphs = len(Subgraph)
        self.register_buffer("running_mean", torch.zeros(n_seeds, n_subgraphs, width))
        self.register_buffer("running_var", torch.ones(n_seeds, n_subgraphs, width))
        self.register_buffer("updated", torch.zeros(n_seeds, n_subgraphs, 1, dtype=torch.bool))

    def forward(self, x: torch.Tensor, subgraph: Subgraph) -> torch.Tensor:
        # torch's kernel normalises each column of (batch, seeds * width): each seed's units
        # over its own batch. A view for one seed, a copy for more.
        n_seeds, batch, width = x.shape
        columns = x.transpose(0, 1).reshape(batch, n_seeds * width)
        gamma, beta = self.gamma.reshape(-1), self.beta.reshape(-1)
        if not self.training:
            out = F.batch_norm(
                columns,
                self.running_mean[:, subgraph].reshape(-1),
                self.running_var[:, subgraph].reshape(-1),
                gamma,
                beta,
                training=False,
                eps=self.eps,
            )
            return out.view(batch, n_seeds, width).transpose(0, 1)
        # The fused kernel, told momentum 1, writes the batch mean and unbiased variance into
        # these; the original's update rule then applies them (several times faster than
        # normalising by hand, forward and backward).
        batch_mean = x.new_zeros(n_seeds * width)
        batch_var = x.new_zeros(n_seeds * width)
        out = F.batch_norm(
            columns, batch_mean, batch_var, gamma, beta, training=True, momentum=1.0, eps=self.eps
        )
        mean, var = batch_mean.view(n_seeds, width), batch_var.view(n_seeds, width)
        self._update_running(subgraph, mean, var)
        return out.view(batch, n_seeds, width).transpose(0, 1)

    @torch.no_grad()
    def _update_running(self, subgraph: Subgraph, mean, unbiased_var) -> None:
        first = self.updated[:, subgraph]  # torch.where keeps the update free of host syncs
        self.running_mean[:, subgraph] = torch.where(
            first, torch.lerp(self.running_mean[:, subgraph], mean, self.momentum), mean
        )
        self.running_var[:, subgraph] = torch.where(
            first,
            torch.lerp(self.running_var[:, subgraph], unbiased_var, self.momentum),
            unbiased_var,
        )
        self.updated[:, subgraph] = True


class SeedLinear(nn.Module):
    """A linear layer per seed: x (seeds, batch, in) -> (seeds, batch, out), one batched matmul."""

    def __init__(self, n_seeds: int, in_dim: int, out_dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_seeds, in_dim, out_dim))
        self.bias = nn.Parameter(torch.empty(n_seeds, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias.unsqueeze(1), x, self.weight)


class Maxout(torch.autograd.Function):
    """The max over the pieces (axis -2 of (..., pieces, width)), whose gradient goes to every
    piece equal to the max, as Theano's does, through a mask kept from the forward pass; torch's
    max/amax backward costs 5-10x more on CPU."""

    @staticmethod
    def forward(ctx, pieces: torch.Tensor) -> torch.Tensor:
        out = pieces.amax(-2)
        if ctx.needs_input_grad[0]:
            # Written into a float tensor: several times faster on CPU than a bool result; a
            # contiguous one, which torch.compile writes into without breaking its graph.
            winners = torch.eq(pieces, out.unsqueeze(-2), out=contiguous_empty_like(pieces))
            ctx.save_for_backward(winners)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (winners,) = ctx.saved_tensors
        return winners * grad.unsqueeze(-2)


class MaxoutStack(nn.Module):
    """`n_layers` of Linear(in -> 4H) [-> BatchNorm] -> maxout of 4 units (docs/original.md 2.2).

    Unit j takes the max of pre-activations j, H+j, 2H+j and 3H+j, where the original takes
    4j..4j+3: a fixed relabelling of the 4H linear units, under which the model, its i.i.d.
    initialisation and BatchNorm (per unit) are unchanged. It puts the pieces on a middle axis,
    which torch reduces 5-20x faster than a last axis of 4.
    """

    def __init__(self, n_seeds: int, in_dim: int, width: int, n_layers: int, batchnorm: bool):
        super().__init__()
        self.width = width
        dims = [in_dim] + [width] * n_layers
        self.linears = nn.ModuleList(
            SeedLinear(n_seeds, d_in, MAXOUT_PIECES * width) for d_in in dims[:-1]
        )
        self.norms = nn.ModuleList(
            SubgraphBatchNorm(n_seeds, MAXOUT_PIECES * width)
            for _ in range(n_layers if batchnorm else 0)
        )

    def forward(self, h: torch.Tensor, subgraph: Subgraph | None = None) -> torch.Tensor:
        for i, linear in enumerate(self.linears):
            h = linear(h)
            if self.norms:
                h = self.norms[i](h, subgraph)
            h = Maxout.apply(h.unflatten(-1, (MAXOUT_PIECES, self.width)))
        return h


class ClassifierNet(nn.Module):
    """q(y|x) network: input dropout -> h(x) trunk -> head -> linear output(s) (docs/original.md
    2.5).

    `forward` returns the trunk features h(x) (which q(z|.) reuses) and the head outputs:
    one clipped logit vector for every model but LogisticNormal, which asks for two unclipped ones.
    """

    def __init__(self, random: "SeedRandom", dropout: float, n_outputs: int = 1,
                 clip: bool = True):  # fmt: skip
        super().__init__()
        self.random = random
        self.dropout = dropout
        self.clip = clip
        n_seeds = random.n_seeds
        self.trunk = MaxoutStack(n_seeds, N_PIXELS, 300, n_layers=4, batchnorm=True)
        self.head = MaxoutStack(n_seeds, 300, 300, n_layers=2, batchnorm=True)
        self.outputs = nn.ModuleList(SeedLinear(n_seeds, 300, N_CLASSES) for _ in range(n_outputs))

    def hidden(self, x: torch.Tensor, subgraph: Subgraph) -> torch.Tensor:
        # A fresh dropout mask per call: the three sub-graphs see independent masks
        # (docs/original.md 2.4).
        x = input_dropout(x, self.dropout, self.training, self.random)
        return self.trunk(x, subgraph)

    def heads(self, hx: torch.Tensor, subgraph: Subgraph) -> list[torch.Tensor]:
        h = self.head(hx, subgraph)
        outs = [output(h) for output in self.outputs]
        return [out.clamp(-LOGIT_CLIP, LOGIT_CLIP) for out in outs] if self.clip else outs


class ZEncoder(nn.Module):
    """q(z | a, x): embed the class code a, join it to h(x), 2 maxout+BN layers, mu and logvar."""

    def __init__(self, n_seeds: int):
        super().__init__()
        self.embed = SeedLinear(n_seeds, N_CLASSES, 300)
        self.stack = MaxoutStack(n_seeds, 600, 300, n_layers=2, batchnorm=True)
        self.mu = SeedLinear(n_seeds, 300, Z_DIM)
        self.logcov2 = SeedLinear(n_seeds, 300, Z_DIM)

    def forward(self, a: torch.Tensor, hx: torch.Tensor, subgraph: Subgraph):
        h = self.stack(torch.cat([self.embed(a), hx], dim=-1), subgraph)
        return self.mu(h), self.logcov2(h)


class Decoder(nn.Module):
    """p(x | a, z): 4 maxout layers without BatchNorm, then Bernoulli logits over the pixels."""

    def __init__(self, n_seeds: int):
        super().__init__()
        self.stack = MaxoutStack(n_seeds, N_CLASSES + Z_DIM, 200, n_layers=4, batchnorm=False)
        self.out = SeedLinear(n_seeds, 200, N_PIXELS)

    def forward(self, a: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.out(self.stack(torch.cat([a, z], dim=-1)))


class SeedRandom:
    """One torch.Generator per seed, started from the seed: what a seed draws does not depend on
    which seeds train beside it. Each draw is (seeds, ...), row i from seed i's own stream. The
    weights' initialisation, every training draw and the evaluation draws come from it."""

    def __init__(self, seed_ids: list[int], device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.generators = [torch.Generator(self.device).manual_seed(seed) for seed in seed_ids]

    @property
    def n_seeds(self) -> int:
        return len(self.generators)

    def each(self, draw, *per_seed: torch.Tensor) -> torch.Tensor:
        """`draw(generator, *rows)` for every seed, with that seed's row of each `per_seed`
        tensor, stacked along a leading seed dimension."""
        draws = [draw(g, *rows) for g, *rows in zip(self.generators, *per_seed, strict=True)]
        return draws[0].unsqueeze(0) if len(draws) == 1 else torch.stack(draws)

    def rand_like(self, x: torch.Tensor) -> torch.Tensor:
        """U[0, 1) shaped like x (seeds, ...)."""
        shape = x.shape[1:]
        return self.each(lambda g: torch.rand(shape, generator=g, dtype=x.dtype, device=x.device))

    def randn_like(self, x: torch.Tensor) -> torch.Tensor:
        """N(0, 1) shaped like x (seeds, ...)."""
        shape = x.shape[1:]
        return self.each(lambda g: torch.randn(shape, generator=g, dtype=x.dtype, device=x.device))

    def randint(self, high: int, shape: tuple) -> torch.Tensor:
        return self.each(lambda g: torch.randint(high, shape, generator=g, device=self.device))

    def randperm(self, n: int) -> torch.Tensor:
        return self.each(lambda g: torch.randperm(n, generator=g, device=self.device))

    def gamma(self, concentration: torch.Tensor) -> torch.Tensor:
        """Gamma(concentration, 1) for concentration (seeds, ...)."""
        return self.each(lambda g, row: torch._standard_gamma(row, generator=g), concentration)

    def get_state(self) -> list[torch.Tensor]:
        return [generator.get_state() for generator in self.generators]

    def set_state(self, states: list[torch.Tensor]) -> None:
        for generator, state in zip(self.generators, states, strict=True):
            generator.set_state(state.cpu())  # a checkpoint loaded onto a GPU moves it there


def bernoulli_draw(p: torch.Tensor | float, like: torch.Tensor, random: SeedRandom) -> torch.Tensor:
    """1.0 with probability p, else 0.0, shaped like `like`: u < p with u ~ U[0, 1), compared
    straight into a float tensor, 2-3x faster on CPU than torch.bernoulli or a bool compare."""
    return torch.lt(random.rand_like(like), p, out=contiguous_empty_like(like))


def contiguous_empty_like(x: torch.Tensor) -> torch.Tensor:
    """An `out=` tensor for x's result. Contiguous whatever x's strides: BatchNorm hands a pack
    of seeds on transposed, and torch.compile breaks its graph at an `out=` that is not
    contiguous (16 more breaks in ExactM2's step at 2 seeds than at 1)."""
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def input_dropout(x: torch.Tensor, p: float, training: bool, random: SeedRandom) -> torch.Tensor:
    """Keep each input with probability 1 - p and scale the kept ones by 1/(1 - p) (docs/original.md
    2.4)."""
    if not training or p == 0:
        return x
    return x * bernoulli_draw(1 - p, x, random) / (1 - p)


def init_uniform_(module: nn.Module, random: SeedRandom) -> None:
    """The original's init: every trainable tensor from U(-0.1, 0.1), each seed's slice from its
    own stream."""
    with torch.no_grad():
        for param in module.parameters():
            for row, generator in zip(param, random.generators, strict=True):
                row.uniform_(-INIT_RANGE, INIT_RANGE, generator=generator)


def gaussian_kl(mu: torch.Tensor, logcov2: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logcov2)) || N(0, I)) per dimension (sum over the last axis for the total)."""
    return 0.5 * (logcov2.exp() + mu.square() - 1.0 - logcov2)


def categorical_kl_uniform(logits: torch.Tensor) -> torch.Tensor:
    """KL(softmax(logits) || Uniform(K)) per example."""
    log_pi = F.log_softmax(logits, dim=-1)
    return (log_pi.exp() * log_pi).sum(-1) + math.log(logits.shape[-1])


def bernoulli_nll(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """-log p(x) under independent Bernoullis with the given logits, per example."""
    return F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)


def relaxed_one_hot(
    logits: torch.Tensor, noise: torch.Tensor, sharpening: float, straight_through: bool
) -> torch.Tensor:
    """softmax(s * (logits + noise)); straight-through: the one-hot of its argmax going forward
    and the soft sample's gradient going back (docs/original.md 3.4, 3.5)."""
    soft = F.softmax(sharpening * (logits + noise), dim=-1)
    if not straight_through:
        return soft
    hard = F.one_hot(soft.argmax(-1), logits.shape[-1]).to(soft.dtype)
    return hard - soft.detach() + soft


def gumbel_noise(like: torch.Tensor, random: SeedRandom) -> torch.Tensor:
    """-log(-log u) with u ~ U(1e-10, 1 - 1e-10), as the original draws it."""
    u = random.rand_like(like) * (1 - 2e-10) + 1e-10
    return -torch.log(-torch.log(u))


def categorical_draw(probs: torch.Tensor, random: SeedRandom) -> torch.Tensor:
    """One class per row of probs (..., classes), by inverting the cumulative sum at a uniform
    draw: one draw per row whatever the seeds, and a row of NaNs (a diverged seed) draws a class
    instead of stopping the seeds beside it, as torch.multinomial would."""
    u = random.rand_like(probs[..., :1])
    below = (probs.cumsum(-1) <= u).sum(-1)
    return below.clamp(max=probs.shape[-1] - 1)


def sample_log_gamma(concentration: torch.Tensor, random: SeedRandom) -> torch.Tensor:
    """log G with G ~ Gamma(concentration, 1), drawn in log space and without gradient.

    log G(b) = log G(b + 1) + log(U) / b: for small b the result is a large negative number
    rather than the log(0) = -inf a direct Gamma(b) draw underflows to (docs/original.md 7.16).
    """
    with torch.no_grad():
        boosted = random.gamma(concentration + 1)
        log_uniform = torch.log1p(-random.rand_like(concentration))  # log of U(0, 1]: finite
        return boosted.log() + log_uniform / concentration
