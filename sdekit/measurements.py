r"""Linear measurements :math:`y = A x + \sigma_y\varepsilon` and reconstruction guidance.

An inverse problem observes data :math:`x` (shape ``(batch, *in_shape)``) through a linear operator
:math:`A` (shape ``(batch, *out_shape)`` out) with Gaussian noise of standard deviation
:math:`\sigma_y \ge 0`. Each :class:`LinearOperator` gives :math:`A`, its adjoint :math:`A^\top`
(:math:`\langle Ax, y\rangle = \langle x, A^\top y\rangle`) and, where it has a closed form, the
pseudo-inverse :math:`A^+`, so that :math:`\Pi = A^+A` is the orthogonal projector onto the
observed part of :math:`x` (the row space of :math:`A`):

- :class:`Mask`: :math:`(Ax)_i = m_i x_i`, inpainting and imputation;
  :math:`A = A^\top = A^+ = \Pi = \operatorname{diag}(m)`; :func:`image_mask` makes the usual
  ones (a centre square, a half, random pixels).
- :class:`Downsample`: average pooling by a factor :math:`f` over the last two dimensions,
  super-resolution; :math:`A^\top y = f^{-2}\,\mathrm{up}(y)` (nearest-neighbour upsampling) and
  :math:`AA^\top = f^{-2}I`, so :math:`A^+ = f^2 A^\top = \mathrm{up}`.
- ``A @ B``: their composition (a :class:`Composition`), e.g. a mask on a downsampled image.

:class:`ReconstructionGuidance` turns an unconditional model into one that samples given
:math:`y`, for every sampler: it adds to the model's score the gradient, by autograd through the
model, of :math:`\log p(y \mid \hat x_0(x_t))` (Chung et al. 2023, "Diffusion posterior sampling",
eq. 16; Ho et al. 2022, "Video diffusion models", §3.1). The samplers that impose :math:`y` exactly
(replacement, RePaint, SMC) are in :mod:`sdekit.inpainting`.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable

import torch

from .checks import check_choice
from .conditioning import Cond, call_model
from .linear import LinearSDE
from .parameterization import Prediction, check_prediction, from_score, to_score
from .sde import broadcast_to_data

#: the kinds of :func:`image_mask`
MASKS = ("centre", "left", "random")


def _shape(x: torch.Tensor) -> tuple[int, ...]:
    return tuple(x.shape)


class LinearOperator(abc.ABC):
    """A linear map from data ``(batch, *in_shape)`` to measurements ``(batch, *out_shape)``.

    Subclasses give :meth:`forward` and :meth:`adjoint`, and :meth:`pinv` where the
    pseudo-inverse has a closed form (replacement, RePaint and SMC need it; guidance does not).
    Calling the operator checks the shape of ``x`` and applies :meth:`forward`.
    """

    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]

    @abc.abstractmethod
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """:math:`Ax` for ``x`` of shape ``(batch, *in_shape)``."""

    @abc.abstractmethod
    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """:math:`A^\\top y` for ``y`` of shape ``(batch, *out_shape)``."""

    def pinv(self, y: torch.Tensor) -> torch.Tensor:
        """:math:`A^+ y`, the least-norm ``x`` with :math:`Ax = y` (for ``y`` in the range)."""
        raise ValueError(
            f"{type(self).__name__} has no closed-form pseudo-inverse, which the methods that "
            "impose the observation exactly need; use method='guidance' for it"
        )

    def project(self, x: torch.Tensor) -> torch.Tensor:
        r""":math:`\Pi x = A^+Ax`, the observed part of ``x``."""
        return self.pinv(self.forward(x))

    def impose(self, x: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
        r""":math:`(I - \Pi)x + \text{observed}`: ``x`` with its observed part replaced by
        ``observed`` (already in the range of :math:`\Pi`, e.g. :math:`A^+y`). For a mask the
        entries are replaced exactly, since :math:`x - x = 0`."""
        return x - self.project(x) + observed

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.forward(x)

    def __matmul__(self, other: LinearOperator) -> Composition:
        return Composition(self, other)

    def check_input(self, x: torch.Tensor, name: str = "x") -> None:
        """``x`` must be ``(batch, *in_shape)``."""
        if not isinstance(x, torch.Tensor) or _shape(x)[1:] != self.in_shape:
            got = _shape(x) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(
                f"{name} must have shape (batch, *{self.in_shape}) for {self!r}, got {got}"
            )

    def check_observation(self, y: torch.Tensor) -> torch.Tensor:
        """Validate an observation ``(batch, *out_shape)``, one per sample, and return it clean.

        It must be a floating-point tensor, finite where it is observed (:class:`Mask` ignores,
        and zeroes, the entries it does not observe: NaN may mark them).
        """
        if not isinstance(y, torch.Tensor) or y.ndim < 1 or _shape(y)[1:] != self.out_shape:
            got = _shape(y) if isinstance(y, torch.Tensor) else type(y).__name__
            raise ValueError(
                f"observation must have shape (batch, *{self.out_shape}) for {self!r}, got {got}"
            )
        if not y.is_floating_point():
            raise ValueError(f"observation must be a floating-point tensor, got {y.dtype}")
        return self._finite_observation(y)

    def _finite_observation(self, y: torch.Tensor) -> torch.Tensor:
        if not bool(torch.isfinite(y).all()):
            raise ValueError("observation contains NaN or inf")
        return y


class Mask(LinearOperator):
    r"""Observe the entries where ``mask`` is True: :math:`(Ax)_i = m_i x_i` (zero elsewhere).

    :math:`A` is a diagonal projector, so :math:`A = A^\top = A^+ = \Pi`. The measurement keeps the
    data's shape; the observed part of ``x`` is its entries at ``mask``.

    Args:
        mask: a bool tensor of the data shape (without the batch dimension), e.g. ``(C, H, W)``
            for images or ``(d,)`` for vectors; the same mask for every sample.
    """

    def __init__(self, mask: torch.Tensor):
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.ndim < 1:
            got = (
                f"{mask.dtype} of shape {_shape(mask)}"
                if isinstance(mask, torch.Tensor)
                else (type(mask).__name__)
            )
            raise ValueError(f"mask must be a bool tensor of the data shape, got {got}")
        self.mask = mask
        self.in_shape = self.out_shape = _shape(mask)

    def __repr__(self) -> str:
        return f"Mask(shape={self.in_shape}, observed={int(self.mask.sum())})"

    def _m(self, x: torch.Tensor) -> torch.Tensor:
        return self.mask.to(x.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.where(self._m(x), x, torch.zeros((), dtype=x.dtype, device=x.device))

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return self.forward(y)

    def pinv(self, y: torch.Tensor) -> torch.Tensor:
        return self.forward(y)

    def _finite_observation(self, y: torch.Tensor) -> torch.Tensor:
        if not bool(torch.isfinite(y[:, self._m(y)]).all()):
            raise ValueError("observation contains NaN or inf at observed entries of the mask")
        return self.forward(y)


def image_mask(
    kind: str, shape, *, fraction: float = 0.5, generator: torch.Generator | None = None
) -> Mask:
    """A standard inpainting mask on images of ``shape`` ``(C, H, W)``, True where observed.

    ``kind``: ``"centre"`` hides the central square of half the side (rounded up), ``"left"`` the
    left half of the columns, ``"random"`` a ``fraction`` of the pixels (the same in every channel),
    drawn from ``generator``.
    """
    check_choice("kind", kind, MASKS)
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"shape must be (C, H, W) with sizes >= 1, got {shape}")
    _, h, w = shape
    hidden = torch.zeros(h, w, dtype=torch.bool)
    if kind == "centre":
        sh, sw = -(-h // 2), -(-w // 2)
        hidden[(h - sh) // 2 : (h - sh) // 2 + sh, (w - sw) // 2 : (w - sw) // 2 + sw] = True
    elif kind == "left":
        hidden[:, : w // 2] = True
    else:
        if not 0 < fraction < 1:
            raise ValueError(f"fraction must lie in (0, 1), got {fraction}")
        order = torch.randperm(h * w, generator=generator)
        hidden.view(-1)[order[: round(fraction * h * w)]] = True
    return Mask((~hidden).expand(shape).clone())


class Downsample(LinearOperator):
    r"""Average pooling by ``factor`` :math:`f` over the last two dimensions (super-resolution).

    :math:`(Ax)_{c,i,j} = f^{-2}\sum_{a,b < f} x_{c,fi+a,fj+b}`. Its adjoint spreads each value
    over its block, :math:`A^\top y = f^{-2}\,\mathrm{up}(y)`; the blocks are disjoint, so
    :math:`AA^\top = f^{-2}I` and :math:`A^+ = A^\top(AA^\top)^{-1} = \mathrm{up}(y)`, and
    :math:`\Pi x` replaces each block by its mean.

    Args:
        in_shape: the data shape ``(..., H, W)`` (without the batch), ``H`` and ``W`` multiples
            of ``factor``.
        factor: the integer downsampling factor, >= 1.
    """

    def __init__(self, in_shape, factor: int = 2):
        in_shape = tuple(int(s) for s in in_shape)
        if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
            raise ValueError(f"factor must be an integer >= 1, got {factor!r}")
        if len(in_shape) < 2 or in_shape[-1] % factor or in_shape[-2] % factor:
            raise ValueError(
                f"in_shape must be (..., H, W) with H and W multiples of factor={factor}, "
                f"got {in_shape}"
            )
        self.factor = factor
        self.in_shape = in_shape
        self.out_shape = (*in_shape[:-2], in_shape[-2] // factor, in_shape[-1] // factor)

    def __repr__(self) -> str:
        return f"Downsample(in_shape={self.in_shape}, factor={self.factor})"

    def _blocks(self, x: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        # (batch, ..., H, W) -> (batch, ..., H/f, f, W/f, f)
        f = self.factor
        *lead, h, w = shape
        return x.reshape(x.shape[0], *lead, h // f, f, w // f, f)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._blocks(x, self.in_shape).mean(dim=(-3, -1))

    def _up(self, y: torch.Tensor) -> torch.Tensor:
        f = self.factor
        up = y[..., :, None, :, None].expand(*y.shape[:-2], y.shape[-2], f, y.shape[-1], f)
        return up.reshape(y.shape[0], *self.in_shape)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return self._up(y) / self.factor**2

    def pinv(self, y: torch.Tensor) -> torch.Tensor:
        return self._up(y)


class Composition(LinearOperator):
    """``outer @ inner``: :math:`A = A_{\\rm outer}A_{\\rm inner}`, with
    :math:`A^\\top = A_{\\rm inner}^\\top A_{\\rm outer}^\\top`; no closed-form pseudo-inverse."""

    def __init__(self, outer: LinearOperator, inner: LinearOperator):
        for name, op in (("outer", outer), ("inner", inner)):
            if not isinstance(op, LinearOperator):
                raise ValueError(f"{name} must be a LinearOperator, got {type(op).__name__}")
        if inner.out_shape != outer.in_shape:
            raise ValueError(
                f"operators do not compose: {inner!r} gives shape {inner.out_shape}, but "
                f"{outer!r} takes {outer.in_shape}"
            )
        self.outer, self.inner = outer, inner
        self.in_shape, self.out_shape = inner.in_shape, outer.out_shape

    def __repr__(self) -> str:
        return f"{self.outer!r} @ {self.inner!r}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.outer.forward(self.inner.forward(x))

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return self.inner.adjoint(self.outer.adjoint(y))


class ReconstructionGuidance:
    r"""A model that samples given :math:`y = Ax + \sigma_y\varepsilon`: reconstruction guidance.

    Bayes' rule splits the conditional score,
    :math:`\nabla\log p_t(x \mid y) = \nabla\log p_t(x) + \nabla\log p_t(y \mid x)`, and the
    likelihood of the noisy state is approximated by that of Tweedie's denoised estimate
    :math:`\hat x_0(x) = (x + \sigma_t^2 s_\theta(x, t))/\alpha_t` with the variance it has as an
    estimate of :math:`x_0` (Ho et al. 2022, §3.1; Chung et al. 2023, eq. 16 for the first factor):

    .. math:: \tilde s(x, t) = s_\theta(x, t) + w\,\nabla_x \log
              \mathcal N\bigl(y;\ A\hat x_0(x),\ r_t^2 I\bigr)
              = s_\theta - \frac{w}{2r_t^2}\nabla_x\lVert y - A\hat x_0(x)\rVert^2,
              \qquad r_t^2 = \sigma_y^2 + \frac{\sigma_t^2}{\alpha_t^2}.

    :math:`w = 1` is the approximate posterior score; Ho et al. use weights :math:`w > 1`, and
    DPS's step :math:`\zeta` plays the same role. The gradient goes through the model by autograd
    (a backward pass per evaluation). With :math:`\sigma_y = 0` the term grows like :math:`w/t`
    as :math:`t \to 0`, so explicit samplers need steps finer than :math:`t/w` there (a quadratic
    or EDM grid) or :math:`\sigma_y > 0`. The guided model predicts what ``model`` predicts
    (:func:`~sdekit.parameterization.from_score`), so it is a model transform every sampler,
    SDE and prediction type accepts; the observation is approached, not imposed.

    Args:
        model: ``model(x, t[, cond])`` predicting ``prediction``.
        sde: the linear SDE of the model.
        operator: the measurement :math:`A`, a :class:`LinearOperator`.
        observation: :math:`y`, ``(batch, *operator.out_shape)``, one per sample (see
            :meth:`LinearOperator.check_observation`).
        noise_std: :math:`\sigma_y`, finite and >= 0.
        scale: the weight :math:`w`, finite and >= 0.
        prediction: what ``model`` outputs.
    """

    def __init__(
        self,
        model: Callable[..., torch.Tensor],
        sde: LinearSDE,
        operator: LinearOperator,
        observation: torch.Tensor,
        *,
        noise_std: float = 0.0,
        scale: float = 1.0,
        prediction: Prediction = "score",
    ):
        if not isinstance(sde, LinearSDE):
            raise ValueError(f"sde must be a LinearSDE (Tweedie's x0), got {type(sde).__name__}")
        if not isinstance(operator, LinearOperator):
            raise ValueError(f"operator must be a LinearOperator, got {type(operator).__name__}")
        if not (math.isfinite(noise_std) and noise_std >= 0):
            raise ValueError(f"noise_std must be a finite number >= 0, got {noise_std}")
        if not (math.isfinite(scale) and scale >= 0):
            raise ValueError(f"scale must be a finite number >= 0, got {scale}")
        check_prediction(prediction)
        self.model, self.sde, self.operator = model, sde, operator
        self.noise_std, self.scale, self.prediction = float(noise_std), float(scale), prediction
        self.observation = operator.check_observation(observation)

    def __call__(self, x: torch.Tensor, t: torch.Tensor, cond: Cond = None) -> torch.Tensor:
        self.operator.check_input(x)
        if x.shape[0] != self.observation.shape[0]:
            raise ValueError(
                f"x has {x.shape[0]} samples but the observation {self.observation.shape[0]}: "
                "give one observation per sample"
            )
        alpha, sigma = (broadcast_to_data(v.to(x.dtype), x) for v in self.sde.marginal(t))

        def score(x_: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return to_score(call_model(self.model, x_, t, cond), self.prediction, x_, alpha, sigma)

        y = self.observation.to(x.device, x.dtype)
        s, _, grad = tweedie_log_likelihood(score, self.sde, self.operator, y, x, t, self.noise_std)
        return from_score(s + self.scale * grad, self.prediction, x, alpha, sigma)


def tweedie_log_likelihood(
    score: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    sde: LinearSDE,
    operator: LinearOperator,
    y: torch.Tensor,
    x: torch.Tensor,
    t: torch.Tensor,
    noise_std: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""The score, :math:`\log\mathcal N(y; A\hat x_0(x), r_t^2 I)` and its gradient in ``x``.

    :math:`\hat x_0 = (x + \sigma_t^2 s(x, t))/\alpha_t` and
    :math:`r_t^2 = \sigma_y^2 + \sigma_t^2/\alpha_t^2` (see :class:`ReconstructionGuidance`); the
    gradient goes through ``score`` by autograd, one call. Returns ``(s, log_lik, grad)``, shapes
    ``x.shape``, ``(batch,)`` (up to a constant) and ``x.shape``, all detached.
    """
    alpha, sigma = (broadcast_to_data(v.to(x.dtype), x) for v in sde.marginal(t))
    r2 = noise_std**2 + (sde.sigma(t) / sde.alpha(t)).to(x.dtype) ** 2
    with torch.enable_grad():
        x_ = x.detach().requires_grad_(True)
        s = score(x_, t)
        residual = y - operator.forward((x_ + sigma**2 * s) / alpha)
        log_lik = -0.5 * (residual**2).flatten(1).sum(1) / r2
        (grad,) = torch.autograd.grad(log_lik.sum(), x_)
    return s.detach(), log_lik.detach(), grad
