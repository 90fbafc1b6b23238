r"""An analytic Gaussian-mixture data distribution: exact :math:`p_t`, score and samples under any linear SDE.

If :math:`p_0 = \sum_k w_k\,\mathcal N(\mu_k, \operatorname{diag} s_k^2)` and the SDE has the marginal
:math:`x_t = \alpha(t)x_0 + \sigma(t)\varepsilon`, then

.. math:: p_t = \sum_k w_k\,\mathcal N\bigl(\alpha\mu_k, \operatorname{diag}(\alpha^2 s_k^2 + \sigma^2)\bigr),
          \qquad \nabla\log p_t(x) = \sum_k r_k(x)\,\frac{\alpha\mu_k - x}{\alpha^2 s_k^2 + \sigma^2},

with responsibilities :math:`r_k \propto w_k\,\mathcal N_k(x)` computed by log-sum-exp, so narrow modes
stay finite. This is the oracle that tests, benchmarks and examples use to measure solver error without a
network.

**Class labels.** Given a label :math:`c_k` per component, the class :math:`y` is the set of its
components, :math:`p(y) = \sum_{c_k = y} w_k`, and under the same SDE, in closed form,

.. math:: p_t(x \mid y) = \sum_{c_k = y} \frac{w_k}{p(y)}\,\mathcal N_k(x), \qquad
          \nabla\log p_t(x \mid y) = \sum_{c_k = y} r_{k|y}(x)\,\frac{\alpha\mu_k - x}
          {\alpha^2 s_k^2 + \sigma^2}, \quad r_{k|y} = \frac{r_k}{\sum_{c_j = y} r_j},

.. math:: p_t(y \mid x) = \sum_{c_k = y} r_k(x), \qquad
          \nabla\log p_t(y \mid x) = \nabla\log p_t(x \mid y) - \nabla\log p_t(x)

(Bayes' rule: :math:`\log p_t(y \mid x) = \log p_t(x \mid y) + \log p(y) - \log p_t(x)`), and
:math:`\nabla p_t(y \mid x) = p_t(y \mid x)\,\nabla\log p_t(y \mid x)`. These are the exact
class-conditional model, classifier and guidance gradient of :mod:`sdekit.guidance`.
"""

from __future__ import annotations

import math

import torch

from .checks import check_time
from .linear import LinearSDE
from .networks.embeddings import NULL_LABEL

_LOG_2PI = math.log(2 * math.pi)


class GaussianMixture:
    """A mixture of ``K`` Gaussians with diagonal (or isotropic) covariances in ``d`` dimensions.

    Args:
        weights: ``(K,)`` non-negative, summing to 1.
        means: ``(K, d)``, or ``(K,)`` for a 1D mixture.
        stds: component standard deviations, > 0: ``(K, d)`` diagonal, ``(K,)`` isotropic, or a scalar.
        labels: optional ``(K,)`` class of each component, integers using every class
            ``0, ..., C - 1`` (each of positive weight); enables the class methods.

    Samples have shape ``(n, d)``. Methods that take ``t`` and ``sde`` describe :math:`p_t` under that
    linear SDE; with ``t=None`` they describe the data distribution :math:`p_0` itself (no smoothing).
    ``t`` may be a float or a ``(batch,)`` tensor matching ``x``.
    """

    def __init__(self, weights, means, stds, labels=None):
        w = torch.as_tensor(weights, dtype=torch.float64)
        mu = torch.as_tensor(means, dtype=torch.float64)
        if mu.ndim == 1:
            mu = mu[:, None]
        if w.ndim != 1 or mu.ndim != 2 or mu.shape[0] != w.shape[0]:
            raise ValueError(
                f"weights must be (K,) and means (K, d) or (K,) with the same K, got weights "
                f"{tuple(w.shape)} and means {tuple(torch.as_tensor(means).shape)}"
            )
        if not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
            raise ValueError(f"weights must be finite and >= 0, got {w.tolist()}")
        if abs(float(w.sum()) - 1) > 1e-6:
            raise ValueError(f"weights must sum to 1 (within 1e-6), got sum {float(w.sum())}")
        s = torch.as_tensor(stds, dtype=torch.float64)
        if s.ndim == 0:
            s = s.expand(mu.shape[0])
        if s.ndim == 1:
            if s.shape[0] != mu.shape[0]:
                raise ValueError(
                    f"stds must be (K,) = ({mu.shape[0]},) or (K, d), got {tuple(s.shape)}"
                )
            s = s[:, None].expand_as(mu)
        if s.shape != mu.shape:
            raise ValueError(f"stds must be (K, d) = {tuple(mu.shape)}, got {tuple(s.shape)}")
        if not bool(torch.isfinite(s).all()) or bool((s <= 0).any()):
            raise ValueError("stds must be finite and > 0")
        if not bool(torch.isfinite(mu).all()):
            raise ValueError("means must be finite")
        self.weights, self.means, self.stds = w, mu, s.contiguous()
        self.labels = None if labels is None else self._check_component_labels(labels)

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def __repr__(self) -> str:
        classes = "" if self.labels is None else f", classes={self.num_classes}"
        return f"GaussianMixture(K={self.weights.shape[0]}, d={self.dim}{classes})"

    def _components(self, t, sde: LinearSDE | None, like: torch.Tensor):
        """Per-sample component means and variances of p_t: both ``(batch or 1, K, d)``."""
        dtype = like.dtype if like.is_floating_point() else torch.float64
        mu = self.means.to(like.device, dtype)[None]
        var = self.stds.to(like.device, dtype)[None] ** 2
        if t is None:
            return mu, var
        if sde is None:
            raise ValueError("sde must be given together with t")
        t = torch.as_tensor(t, dtype=dtype, device=like.device)
        if t.ndim == 0:
            t = t.reshape(1)
        check_time(t, sde.T)
        alpha, sigma = sde.alpha(t)[:, None, None], sde.sigma(t)[:, None, None]
        return alpha * mu, alpha**2 * var + sigma**2

    def _check_x(self, x: torch.Tensor) -> None:
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must have shape (batch, {self.dim}), got {tuple(x.shape)}")

    def _component_log_probs(self, x, t, sde):
        self._check_x(x)
        mean, var = self._components(t, sde, x)
        diff = x[:, None, :] - mean
        log_n = -0.5 * (diff**2 / var + torch.log(var) + _LOG_2PI).sum(-1)
        return torch.log(self.weights.to(x.device, x.dtype)) + log_n, diff, var

    def log_prob(self, x: torch.Tensor, t=None, sde: LinearSDE | None = None) -> torch.Tensor:
        """Exact :math:`\\log p_t(x)`, shape ``(batch,)``."""
        log_joint, _, _ = self._component_log_probs(x, t, sde)
        return torch.logsumexp(log_joint, dim=1)

    def score(self, x: torch.Tensor, t=None, sde: LinearSDE | None = None) -> torch.Tensor:
        """Exact score :math:`\\nabla_x \\log p_t(x)`, shape ``(batch, d)``."""
        log_joint, diff, var = self._component_log_probs(x, t, sde)
        resp = torch.softmax(log_joint, dim=1)[..., None]
        return -(resp * diff / var).sum(1)

    def score_fn(self, sde: LinearSDE):
        """The exact score as a function ``score(x, t)``, as samplers and reverse SDEs take it."""

        def score(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return self.score(x, t, sde)

        return score

    def sample(
        self,
        n: int,
        t=None,
        sde: LinearSDE | None = None,
        *,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """``n`` exact samples of :math:`p_t` (a float ``t``), shape ``(n, d)``."""
        return self._sample(n, t, sde, generator=generator, dtype=dtype, device=device)[0]

    def _sample(self, n, t, sde, *, generator, dtype, device):
        """``n`` samples and the index of the component each came from."""
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if t is not None and torch.as_tensor(t).numel() != 1:
            raise ValueError(
                "t must be a single time for sample(); draw per-time batches separately"
            )
        like = torch.empty(0, dtype=dtype, device=device)
        mean, var = self._components(t, sde, like)
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        noise = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        k, noise = k.to(like.device), noise.to(like.device, dtype)
        return mean[0, k] + var[0, k].sqrt() * noise, k

    def cdf(self, x: torch.Tensor, t=None, sde: LinearSDE | None = None) -> torch.Tensor:
        """Exact CDF of a 1D mixture's :math:`p_t` at ``x`` of shape ``(batch,)`` or ``(batch, 1)``."""
        if self.dim != 1:
            raise ValueError(f"cdf is defined for a 1D mixture, this one has d={self.dim}")
        x = x.reshape(-1, 1)
        mean, var = self._components(t, sde, x)
        z = (x[:, None, :] - mean) / var.sqrt()
        return (self.weights.to(x.device, x.dtype) * torch.special.ndtr(z)[..., 0]).sum(1)

    def at(self, t: float, sde: LinearSDE) -> GaussianMixture:
        """The marginal :math:`p_t` as a mixture of its own."""
        mean, var = self._components(t, sde, self.means)
        return GaussianMixture(self.weights, mean[0], var[0].sqrt(), self.labels)

    def project(self, direction) -> GaussianMixture:
        """The law of :math:`v^\\top x` for ``x`` from this mixture: a 1D mixture (for sliced distances)."""
        v = torch.as_tensor(direction, dtype=torch.float64)
        if v.shape != (self.dim,):
            raise ValueError(f"direction must have shape ({self.dim},), got {tuple(v.shape)}")
        return GaussianMixture(
            self.weights, self.means @ v, ((self.stds**2) @ (v**2)).sqrt(), self.labels
        )

    def condition(self, observed_mask, values, *, noise_std: float = 0.0) -> GaussianMixture:
        r"""The exact posterior of the unobserved coordinates given the observed ones.

        With observed coordinates :math:`o` (``observed_mask``), unobserved :math:`u`, and the
        observation :math:`y = x_o + \sigma_y\varepsilon` (``values[observed_mask]``;
        ``noise_std`` :math:`= \sigma_y \ge 0`, 0 for an exact observation), each component's
        covariance is diagonal, so :math:`x_u` and :math:`x_o` are independent within it and

        .. math:: p(x_u \mid y) = \sum_k w'_k\,\mathcal N\bigl(\mu_{k,u}, \operatorname{diag} s_{k,u}^2\bigr),
                  \qquad w'_k \propto w_k\,\mathcal N\bigl(y;\ \mu_{k,o},
                  \operatorname{diag}(s_{k,o}^2 + \sigma_y^2)\bigr):

        conditioning keeps each component's unobserved part and reweights it by the marginal
        likelihood of the observation (Bishop 2006, §2.3.1 and §9.2), computed by log-sum-exp.

        Args:
            observed_mask: ``(d,)`` bools, True where the coordinate is observed; not all True.
            values: ``(d,)``, the observation at the observed coordinates (finite there; the
                other entries are ignored and may be NaN).
            noise_std: the observation noise :math:`\sigma_y`, finite and >= 0.

        Returns:
            A mixture over the ``d - n_observed`` unobserved coordinates, in their order.
        """
        mask = torch.as_tensor(observed_mask)
        if mask.dtype != torch.bool or mask.shape != (self.dim,):
            raise ValueError(
                f"observed_mask must be a bool tensor of shape ({self.dim},), got "
                f"{mask.dtype} of shape {tuple(mask.shape)}"
            )
        if bool(mask.all()):
            raise ValueError("observed_mask must leave at least one coordinate unobserved")
        y = torch.as_tensor(values, dtype=torch.float64)
        if y.shape != (self.dim,):
            raise ValueError(
                f"values must have shape ({self.dim},) like the data, got {tuple(y.shape)}"
            )
        if not bool(torch.isfinite(y[mask]).all()):
            raise ValueError("values must be finite at the observed coordinates")
        if not (math.isfinite(noise_std) and noise_std >= 0):
            raise ValueError(f"noise_std must be a finite number >= 0, got {noise_std}")
        var = self.stds[:, mask] ** 2 + noise_std**2
        diff = y[mask] - self.means[:, mask]
        log_lik = -0.5 * (diff**2 / var + torch.log(var) + _LOG_2PI).sum(1)
        weights = torch.softmax(torch.log(self.weights) + log_lik, 0)
        return GaussianMixture(weights, self.means[:, ~mask], self.stds[:, ~mask])

    # --- class labels: the exact class-conditional oracle (module docs) ---------------------------

    def _check_component_labels(self, labels) -> torch.Tensor:
        c = torch.as_tensor(labels)
        k = self.weights.shape[0]
        if c.shape != (k,) or c.dtype.is_floating_point or c.dtype == torch.bool:
            raise ValueError(
                f"labels must be (K,) = ({k},) integers, got {tuple(c.shape)} {c.dtype}"
            )
        c = c.to(torch.int64)
        if bool((c < 0).any()):
            raise ValueError(f"labels must be >= 0, got {c.tolist()}")
        mass = torch.zeros(int(c.max()) + 1, dtype=torch.float64).index_add_(0, c, self.weights)
        if bool((mass <= 0).any()):
            missing = torch.nonzero(mass <= 0).flatten().tolist()
            raise ValueError(
                f"labels must use every class 0, ..., C - 1 with positive weight; classes {missing} "
                f"have none, got labels {c.tolist()}"
            )
        return c

    @property
    def num_classes(self) -> int | None:
        """The number of classes ``C`` (``None`` without component labels)."""
        return None if self.labels is None else int(self.labels.max()) + 1

    def _labeled(self) -> torch.Tensor:
        if self.labels is None:
            raise ValueError("this mixture has no component labels: pass labels= (K,) to it")
        return self.labels

    @property
    def class_weights(self) -> torch.Tensor:
        """The class prior :math:`p(y) = \\sum_{c_k = y} w_k`, shape ``(C,)``."""
        c = self._labeled()
        return torch.zeros(self.num_classes, dtype=torch.float64).index_add_(0, c, self.weights)

    def _check_y(self, y, batch: int, like: torch.Tensor, *, allow_null: bool = False):
        c = self.num_classes
        y = torch.as_tensor(y, device=like.device)
        if y.ndim == 0:
            y = y.expand(batch)
        if y.shape != (batch,) or y.dtype.is_floating_point or y.dtype == torch.bool:
            raise ValueError(
                f"y must be an integer or (batch,) = ({batch},) integers, got {tuple(y.shape)} "
                f"{y.dtype}"
            )
        ok = (y >= 0) & (y < c)
        if allow_null:
            ok |= y == NULL_LABEL
        if not bool(ok.all()):
            null = f" or NULL_LABEL = {NULL_LABEL}" if allow_null else ""
            raise ValueError(f"y must lie in [0, {c}){null}, got {y[~ok][:4].tolist()}")
        return y

    def class_mixture(self, y: int) -> GaussianMixture:
        """The data law of class ``y``, :math:`p_0(x \\mid y)`: its components, renormalised."""
        c = self._labeled()
        if isinstance(y, bool) or not isinstance(y, int) or not 0 <= y < self.num_classes:
            raise ValueError(f"y must be an integer in [0, {self.num_classes}), got {y!r}")
        keep = c == y
        w = self.weights[keep]
        return GaussianMixture(w / w.sum(), self.means[keep], self.stds[keep])

    def log_posterior(self, x: torch.Tensor, t=None, sde: LinearSDE | None = None) -> torch.Tensor:
        """Exact :math:`\\log p_t(y \\mid x)` for every class, shape ``(batch, C)``."""
        c = self._labeled().to(x.device)
        log_joint, _, _ = self._component_log_probs(x, t, sde)
        member = c[:, None] == torch.arange(self.num_classes, device=x.device)  # (K, C)
        mask = torch.zeros(member.shape, dtype=log_joint.dtype, device=x.device)
        mask = mask.masked_fill(~member, -math.inf)
        log_class = torch.logsumexp(log_joint[:, :, None] + mask, dim=1)
        return log_class - torch.logsumexp(log_joint, dim=1, keepdim=True)

    def class_score(self, x: torch.Tensor, y, t=None, sde: LinearSDE | None = None) -> torch.Tensor:
        """Exact class-conditional score :math:`\\nabla_x\\log p_t(x \\mid y)`, shape ``(batch, d)``.

        ``y``: an integer or one per sample ``(batch,)``; :data:`~sdekit.networks.NULL_LABEL` rows
        get the unconditional score (the oracle of classifier-free guidance's null label).
        """
        c = self._labeled().to(x.device)
        log_joint, diff, var = self._component_log_probs(x, t, sde)
        y = self._check_y(y, x.shape[0], x, allow_null=True)
        member = (c[None, :] == y[:, None]) | (y[:, None] == NULL_LABEL)
        resp = torch.softmax(log_joint.masked_fill(~member, -math.inf), dim=1)[..., None]
        return -(resp * diff / var).sum(1)

    def log_posterior_grad(
        self, x: torch.Tensor, y, t=None, sde: LinearSDE | None = None
    ) -> torch.Tensor:
        """Exact :math:`\\nabla_x\\log p_t(y \\mid x)`, shape ``(batch, d)``: the guidance gradient."""
        self._check_y(y, x.shape[0], x)
        return self.class_score(x, y, t, sde) - self.score(x, t, sde)

    def classifier_fn(self, sde: LinearSDE):
        """The exact noisy classifier ``fn(x, t) -> log p_t(y | x)`` ``(batch, C)``, as
        :func:`sdekit.guidance.classifier_guidance` takes a classifier (its logits)."""

        def classifier(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return self.log_posterior(x, t, sde)

        classifier.num_classes = self.num_classes
        return classifier

    def conditional_score_fn(self, sde: LinearSDE):
        """The exact class-conditional score as a conditional model ``fn(x, t, labels)``
        (:data:`~sdekit.networks.NULL_LABEL` gives the unconditional score)."""

        def score(x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            return self.class_score(x, labels, t, sde)

        return score

    def sample_with_labels(
        self,
        n: int,
        t=None,
        sde: LinearSDE | None = None,
        *,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` exact samples of :math:`p_t` and their classes: ``(x (n, d), y (n,) int64)``."""
        c = self._labeled()
        x, k = self._sample(n, t, sde, generator=generator, dtype=dtype, device=device)
        return x, c.to(k.device)[k]
