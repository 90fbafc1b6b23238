r"""Sequential Monte Carlo samplers given an observation: SMCDiff and twisted diffusion sampling.

Both move ``particles`` states per sample with the chosen sampler's Gaussian step
:math:`x_{k+1} = m(x_k) + c_k z` (:math:`z \sim \mathcal N(0, I)`) from :math:`t_k` to
:math:`t_{k+1}`, weight them, and resample them (systematically, per sample, when the effective
sample size :math:`1/\sum_i w_i^2` of the normalized weights falls below ``ess_threshold`` times the
particles); each output is one draw from its sample's final weighted particles. With :math:`\Pi`
the observed part and :math:`A^+y` the observation in data space (:mod:`sdekit.measurements`):

- :func:`smcdiff` (Trippe et al. 2023, Alg. 1): one forward path of the observation is drawn per
  sample, :math:`\tilde y_{t_N} = \alpha_{t_N}A^+y + \sigma_{t_N}\Pi z` and
  :math:`\tilde y_{t_k} = \alpha_{t_k|t_{k+1}}\tilde y_{t_{k+1}} + \sigma_{t_k|t_{k+1}}\Pi z`; the
  particles' observed part is set to it after every move, and the weight is the likelihood the
  step gives it, :math:`w_k = \mathcal N(\tilde y_{t_{k+1}};\ \Pi m(x_k),\ c_k^2\Pi)`. It does not
  depend on the move, so particles are resampled before they move. Gradient-free; it samples the
  exact posterior as the particles grow *and* the steps shrink (it needs the model's reverse
  kernels to match the forward ones).
- :func:`tds`, twisted diffusion sampling (Wu et al. 2023, Alg. 1): the twisting function
  :math:`\tilde p_k(y \mid x) = \mathcal N(y;\ A\hat x_0(x),\ (\sigma_{t_k}/\alpha_{t_k})^2 I)`
  (:func:`~sdekit.measurements.tweedie_log_likelihood`) guides the proposal, the step with the
  score :math:`s + \nabla\log\tilde p_k`, of mean :math:`\tilde m(x_k)`; the weight
  corrects it, :math:`w_k = \frac{\mathcal N(x_{k+1};\, m(x_k), c_k^2)\,\tilde p_{k+1}(y \mid x_{k+1})}
  {\mathcal N(x_{k+1};\, \tilde m(x_k), c_k^2)\,\tilde p_k(y \mid x_k)}`. The last step proposes from
  the model with the observed part set to :math:`A^+y`, weighted by
  :math:`\mathcal N(A^+y;\ \Pi m(x_{N-1}), c_{N-1}^2\Pi) / \tilde p_{N-1}(y \mid x_{N-1})`. The
  target is exactly the model's own discretized joint conditioned on its final observed part, for
  any twist: it is asymptotically exact in the particles at any number of steps. One backward pass
  through the model per step.

:math:`m` and :math:`c` come from the sampler itself: its step is run with the noise set to zero
and to one, with the model's output at :math:`x_k` computed once. That requires a step that calls
the model once, at :math:`x_k`, and then adds Gaussian noise once (the likelihood of a step is
otherwise unknown); :func:`check_gaussian_step` refuses the others.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .conditioning import Cond, call_model, select
from .linear import LinearSDE
from .measurements import LinearOperator, tweedie_log_likelihood
from .parameterization import Prediction, to_score
from .sampling.noise import NoiseSource
from .sampling.registry import SamplerSpec
from .sde import broadcast_to_data

Generator = torch.Generator | list[torch.Generator] | tuple[torch.Generator, ...] | None


class ModelScore:
    """A model as a score function ``score(x, t)``, counting calls; ``cond`` follows resampling."""

    def __init__(self, model: Callable, sde: LinearSDE, prediction: Prediction, cond: Cond):
        self.model, self.sde, self.prediction, self.cond = model, sde, prediction, cond
        self.nfe = 0

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.nfe += 1
        out = call_model(self.model, x, t, self.cond).to(x.dtype)
        if self.prediction == "score":
            return out
        alpha, sigma = (broadcast_to_data(v.to(x.dtype), x) for v in self.sde.marginal(t))
        return to_score(out, self.prediction, x, alpha, sigma)


class ParticleNoise:
    """Standard normals (and uniforms) for ``particles`` states per sample; with one generator per
    sample each sample's particles draw from its own."""

    def __init__(self, generator: Generator, particles: int):
        self.generator, self.particles = generator, particles
        self.per_sample = not (generator is None or isinstance(generator, torch.Generator))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        kw = {"device": x.device, "dtype": x.dtype}
        if not self.per_sample:
            return torch.randn(x.shape, generator=self.generator, **kw)
        shape = (self.particles, *x.shape[1:])
        return torch.cat([torch.randn(shape, generator=g, **kw) for g in self.generator])

    def uniform(self, batch: int, like: torch.Tensor) -> torch.Tensor:
        """``(batch, 1)`` uniforms on [0, 1), one per sample."""
        kw = {"device": like.device, "dtype": like.dtype}
        if not self.per_sample:
            return torch.rand((batch, 1), generator=self.generator, **kw)
        return torch.cat([torch.rand((1, 1), generator=g, **kw) for g in self.generator])


class _Fixed:
    """A noise source returning a constant, counting its calls."""

    def __init__(self, value: float):
        self.value, self.calls = value, 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return torch.full_like(x, self.value)


class _At:
    """The score already computed at ``x``; refused anywhere else."""

    def __init__(self, x: torch.Tensor, value: torch.Tensor, sampler: str):
        self.x, self.value, self.sampler = x, value, sampler

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        # every qualifying sampler passes its state itself: the identity check costs no host sync
        if not (x is self.x or torch.equal(x, self.x)):
            raise ValueError(
                f"SMC needs a sampler whose step evaluates the model once, at the current state, "
                f"then adds Gaussian noise; {self.sampler!r} evaluates it elsewhere (a corrector, "
                "a second stage or churn): use euler_maruyama, ancestral or ddim with eta > 0"
            )
        return self.value


def _step(spec: SamplerSpec, sde, x, score, ts, options, noise: float) -> torch.Tensor:
    source = _Fixed(noise)
    out = spec(_At(x, score, spec.name), sde, x, ts, noise=source, **options)
    if source.calls != 1:
        what = "is deterministic here" if source.calls == 0 else f"drew noise {source.calls} times"
        raise ValueError(
            f"SMC needs a sampler that draws Gaussian noise once per step; {spec.name!r} {what} "
            "(use euler_maruyama, ancestral or ddim with eta > 0)"
        )
    return out


def gaussian_step(
    spec: SamplerSpec, sde, x, score, ts, options
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The mean :math:`m(x)` and noise scale :math:`c` of the sampler's step over the 2-point
    grid ``ts``, given the score at ``x`` (no model call)."""
    mean = _step(spec, sde, x, score, ts, options, 0.0)
    return mean, _step(spec, sde, x, score, ts, options, 1.0) - mean


def check_gaussian_step(spec: SamplerSpec) -> None:
    """Refuse, before any model call, samplers whose step cannot be a Gaussian kernel here."""
    if spec.evals_per_step is None:
        raise ValueError(
            f"SMC cannot run sampler {spec.name!r} (adaptive steps): use euler_maruyama, "
            "ancestral or ddim with eta > 0"
        )
    # an explicit one-step method has at most as many stages as its order: more is a multistep one
    if spec.order > spec.evals_per_step:
        raise ValueError(
            f"SMC cannot run sampler {spec.name!r}: a multistep method's history cannot follow "
            "resampled particles (use euler_maruyama, ancestral or ddim with eta > 0)"
        )


def _resample(log_w: torch.Tensor, u: torch.Tensor, count: int) -> torch.Tensor:
    """``count`` indices per row of ``log_w`` ``(batch, K)``, drawn systematically with the
    offsets ``u`` ``(batch, 1)`` (Kitagawa 1996; one index is one categorical draw)."""
    cdf = torch.cumsum(torch.softmax(log_w, 1), 1)
    points = (u + torch.arange(count, device=u.device, dtype=u.dtype)) / count
    return torch.searchsorted(cdf, points.to(cdf.dtype)).clamp(max=log_w.shape[1] - 1)


class _Particles:
    """Bookkeeping of ``batch * particles`` states: the row offsets, log-weights, resampling."""

    def __init__(
        self, batch: int, particles: int, ess_threshold: float, noise: ParticleNoise, like
    ):
        self.batch, self.particles, self.threshold, self.noise = (
            batch,
            particles,
            ess_threshold,
            noise,
        )
        rows = torch.arange(batch, device=like.device)
        self.offsets = (rows * particles)[:, None]
        self.groups = rows.repeat_interleave(particles)
        self.log_w = like.new_zeros(batch, particles)

    def reweight(self, log_increment: torch.Tensor) -> torch.Tensor:
        """Add the increments ``(batch * particles,)``; return the flat indices that resample the
        samples whose effective sample size is low (the identity elsewhere), and reset those."""
        k = self.particles
        self.log_w = self.log_w + log_increment.reshape(self.batch, k)
        w = torch.softmax(self.log_w, 1)
        low = (1 / (w**2).sum(1) < self.threshold * k)[:, None]
        chosen = _resample(self.log_w, self.noise.uniform(self.batch, self.log_w), k)
        keep = torch.arange(k, device=w.device).expand(self.batch, k)
        self.log_w = torch.where(low, torch.zeros_like(self.log_w), self.log_w)
        return (self.offsets + torch.where(low, chosen, keep)).reshape(-1)

    def pick(self) -> torch.Tensor:
        """One flat index per sample, drawn from its weighted particles."""
        draw = _resample(self.log_w, self.noise.uniform(self.batch, self.log_w), 1)
        return (self.offsets + draw).reshape(-1)


def _gap(operator: LinearOperator, observed: torch.Tensor, mean: torch.Tensor, c: torch.Tensor):
    r""":math:`\log\mathcal N(\text{observed};\ \Pi m, c^2\Pi)` up to a constant, per state."""
    return -0.5 * ((operator.project(observed - mean) / c) ** 2).flatten(1).sum(1)


def smcdiff(
    score: ModelScore,
    sde: LinearSDE,
    spec: SamplerSpec,
    operator: LinearOperator,
    target: torch.Tensor,
    ts: torch.Tensor,
    *,
    particles: int,
    ess_threshold: float,
    noise: ParticleNoise,
    path_noise: NoiseSource,
    options: dict,
) -> torch.Tensor:
    """SMCDiff (module doc) for the observation ``target`` :math:`= A^+y` ``(batch, *data)``;
    returns one state at ``ts[-1]`` per sample."""
    batch, n = target.shape[0], ts.shape[0] - 1
    state = _Particles(batch, particles, ess_threshold, noise, target)
    alpha, sigma = (v.to(target.dtype) for v in (sde.alpha(ts), sde.sigma(ts)))
    path = [alpha[n] * target + sigma[n] * operator.project(path_noise(target))]
    for k in range(n - 1, -1, -1):  # from t_min up to T, read backwards below
        s, t = (ts[j : j + 1].expand(batch) for j in (k + 1, k))
        a, c = (broadcast_to_data(v.to(target.dtype), target) for v in sde.transition(s, t))
        path.append(a * path[-1] + c * operator.project(path_noise(target)))
    path = path[::-1]
    score.cond = select(score.cond, state.groups)
    x = sde.prior_std * noise(target.new_empty((batch * particles, *target.shape[1:])))
    x = operator.impose(x, path[0][state.groups])
    for k in range(n):
        t = ts[k].to(x.dtype).expand(x.shape[0])
        mean, c = gaussian_step(spec, sde, x, score(x, t), ts[k : k + 2], options)
        observed = path[k + 1][state.groups]
        index = state.reweight(_gap(operator, observed, mean, c))
        mean, c = mean[index], c[index]
        score.cond = select(score.cond, index)
        x = operator.impose(mean + c * noise(mean), observed)
    index = state.pick()
    score.cond = select(score.cond, index)
    return x[index]


def tds(
    score: ModelScore,
    sde: LinearSDE,
    spec: SamplerSpec,
    operator: LinearOperator,
    target: torch.Tensor,
    ts: torch.Tensor,
    *,
    particles: int,
    ess_threshold: float,
    noise: ParticleNoise,
    options: dict,
) -> torch.Tensor:
    """Twisted diffusion sampling (module doc) for ``target`` :math:`= A^+y`; returns one state at
    ``ts[-1]`` per sample."""
    batch, n = target.shape[0], ts.shape[0] - 1
    state = _Particles(batch, particles, ess_threshold, noise, target)
    score.cond = select(score.cond, state.groups)
    target = target[state.groups]
    y = operator.forward(target)

    def twist(x: torch.Tensor, k: int):
        t = ts[k].to(x.dtype).expand(x.shape[0])
        return tweedie_log_likelihood(score, sde, operator, y, x, t)

    x = sde.prior_std * noise(target.new_empty(target.shape))
    s, log_twist, grad = twist(x, 0)
    state.log_w = state.log_w + log_twist.reshape(state.log_w.shape)  # the first target p_T p~_0
    for k in range(n):
        grid = ts[k : k + 2]
        mean, c = gaussian_step(spec, sde, x, s, grid, options)
        if k < n - 1:
            guided = _step(spec, sde, x, s + grad, grid, options, 0.0)
            x_next = guided + c * noise(guided)
            s, log_next, grad = twist(x_next, k + 1)
            # log N(x'; m, c^2) - log N(x'; m~, c^2): the proposal's noise is (x' - m~) / c
            moved = ((x_next - guided) ** 2 - (x_next - mean) ** 2) / (2 * c**2)
            increment = moved.flatten(1).sum(1) + log_next - log_twist
        else:
            x_next = operator.impose(mean + c * noise(mean), target)
            increment = _gap(operator, target, mean, c) - log_twist
            log_next = log_twist
        index = state.reweight(increment)
        x, log_twist = x_next[index], log_next[index]
        s, grad, target = s[index], grad[index], target[index]
        score.cond = select(score.cond, index)
        y = y[index]
    index = state.pick()
    score.cond = select(score.cond, index)
    return x[index]
