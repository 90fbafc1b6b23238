r"""Peer samplers driven by the same exact score: diffusers' schedulers and k-diffusion's samplers.

The maps between the peers' parameterizations and sdekit's are the package's own
(:mod:`sdekit.interop`, :mod:`sdekit.discrete`); this file only drives the peers:

- diffusers (Ho et al. 2020's discrete DDPM) runs on the 1000-step schedule
  :meth:`~sdekit.discrete.DiscreteVPSDE.from_sde` of the benchmark's VP SDE, whose
  :math:`\bar\alpha_\tau` equals the continuous :math:`\alpha(t)^2` at :math:`t = (\tau + 1)/1000`
  (DDPM's betas do not: :math:`\bar\alpha_{999} = 4.04\cdot10^{-5}` against
  :math:`\alpha(1)^2 = 4.32\cdot10^{-5}`), so every scheduler sees the marginals sdekit's samplers
  integrate, from :math:`t_{\min} = 10^{-3}` (timestep 0) to :math:`T` (timestep 999). Its
  :math:`\varepsilon`-model of ``(x, timestep)`` evaluates the score at the time with the noise
  level :math:`\tilde\sigma_\tau` the scheduler assumes (linear in a fractional :math:`\tau`, as its
  Euler and Heun interpolate): :math:`t = \lambda^{-1}(-2\log\tilde\sigma_\tau)`
  (:func:`~sdekit.interop.edm_time`), :math:`\varepsilon = -\sigma_t\,s(x, t)`.
- k-diffusion (Karras et al. 2022, eq. 4 with :math:`s(t) = \alpha`) solves the EDM ODE in
  :math:`\tilde x = x/\alpha`, :math:`\tilde\sigma = \sigma/\alpha` with the denoiser
  :class:`~sdekit.interop.KDiffusionDenoiser` of the score (Tweedie).

Peers are optional: :func:`peers` leaves out (with a message) any library that is not installed.
k-diffusion's package ``__init__`` imports torchvision and more, so only ``k_diffusion/sampling.py``
is loaded, by file path, with a stub ``k_diffusion.utils`` providing the one helper it uses.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import math
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass

import torch

from sdekit.discrete import DiscreteVPSDE
from sdekit.interop import KDiffusionDenoiser, edm_sigma, edm_time
from sdekit.linear import VPSDE

Score = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Peer:
    """A peer sampler: ``run(score, x_T, nfe, generator) -> (samples, nfe_used <= nfe)``.

    ``adaptive`` samplers ignore the budget's exactness: they are run at several tolerances instead
    (``run(score, x_T, tol, generator)``) and placed at the NFE they used.
    """

    name: str
    run: Callable
    adaptive: bool = False


def load_k_diffusion_sampling() -> types.ModuleType | None:
    """``k_diffusion.sampling`` alone, or None when k-diffusion (or torchsde) is missing."""
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or spec.submodule_search_locations is None:
        return None
    if importlib.util.find_spec("torchsde") is None:
        return None
    root = spec.submodule_search_locations[0]
    package = types.ModuleType("k_diffusion")
    package.__path__ = [root]
    utils = types.ModuleType("k_diffusion.utils")

    def append_dims(x, target_dims):
        return x[(...,) + (None,) * (target_dims - x.ndim)]

    utils.append_dims = append_dims
    package.utils = utils
    saved = {name: sys.modules.get(name) for name in ("k_diffusion", "k_diffusion.utils")}
    sys.modules["k_diffusion"], sys.modules["k_diffusion.utils"] = package, utils
    try:
        file_spec = importlib.util.spec_from_file_location(
            "k_diffusion.sampling", f"{root}/sampling.py"
        )
        module = importlib.util.module_from_spec(file_spec)
        file_spec.loader.exec_module(module)
    finally:
        for name, old in saved.items():
            if old is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = old
    return module


def k_denoiser(score: Score, sde: VPSDE) -> Callable:
    """k-diffusion's denoiser :math:`D(\\tilde x, \\tilde\\sigma)` of a VP score (the package's map)."""
    return KDiffusionDenoiser(score, sde, "score")


def k_sigma_range(sde: VPSDE) -> tuple[float, float]:
    """:math:`(\\tilde\\sigma(t_{\\min}), \\tilde\\sigma(T))`: sdekit's times in k-diffusion."""
    s = edm_sigma(sde, torch.tensor([sde.t_min, sde.T], dtype=torch.float64))
    return float(s[0]), float(s[1])


def k_grid(k, sde: VPSDE, n: int, kind: str) -> torch.Tensor:
    """``n`` sigmas from :math:`\\tilde\\sigma(T)` to :math:`\\tilde\\sigma(t_{\\min})`, then 0.

    ``kind``: ``"karras"`` (Karras et al. 2022, eq. 5, rho = 7) or ``"vp"`` (uniform in t).
    """
    lo, hi = k_sigma_range(sde)
    if kind == "karras":
        return k.get_sigmas_karras(n, lo, hi).to(torch.float64)
    if kind == "vp":
        t = torch.linspace(sde.T, sde.t_min, n, dtype=torch.float64)
        return k.append_zero(edm_sigma(sde, t))
    raise ValueError(f"kind must be 'karras' or 'vp', got {kind!r}")


def _gaussian_noise_sampler(x: torch.Tensor, generator: torch.Generator):
    # Plain independent Gaussians instead of k-diffusion's default Brownian tree: the same law per
    # step, far cheaper on a 50,000-sample batch, and seeded by the benchmark's generator.
    return lambda sigma, sigma_next: torch.randn(
        x.shape, generator=generator, dtype=x.dtype, device=x.device
    )


def k_diffusion_peers(sde: VPSDE, grids: tuple[str, ...] = ("karras",)) -> list[Peer]:
    """k-diffusion's euler, heun, dpm_2, lms, dpmpp_2m, dpmpp_2m_sde, dpmpp_3m_sde, dpm_adaptive."""
    k = load_k_diffusion_sampling()
    if k is None:
        print("k-diffusion (with torchsde) is not installed: its samplers are left out")
        return []
    # name -> (function, evals of a step but the last, stochastic); the last step (to sigma = 0) is
    # a single evaluation for every method here.
    methods = {
        "euler": (k.sample_euler, 1, False),
        "heun": (k.sample_heun, 2, False),
        "dpm_2": (k.sample_dpm_2, 2, False),
        "lms": (k.sample_lms, 1, False),
        "dpmpp_2m": (k.sample_dpmpp_2m, 1, False),
        "dpmpp_2m_sde": (k.sample_dpmpp_2m_sde, 1, True),
        "dpmpp_3m_sde": (k.sample_dpmpp_3m_sde, 1, True),
    }

    def make(fn, per_step, stochastic, grid):
        def run(score, x_T, nfe, generator):
            # n sigmas + a final 0: (n - 1) steps of `per_step` evaluations and a 1-eval last step.
            n = (nfe - 1) // per_step + 1
            if n < 2:
                return None
            sigmas = k_grid(k, sde, n, grid).to(x_T.device)
            alpha_T = math.sqrt(1 / (1 + float(sigmas[0]) ** 2))
            extra = {"noise_sampler": _gaussian_noise_sampler(x_T, generator)} if stochastic else {}
            out = fn(k_denoiser(score, sde), x_T / alpha_T, sigmas, disable=True, **extra)
            return out, (n - 1) * per_step + 1

        return run

    out = [
        Peer(f"k:{name}" + ("" if grid == "karras" else f"[{grid}]"), make(*spec, grid))
        for grid in grids
        for name, spec in methods.items()
    ]

    def adaptive(score, x_T, tol, generator):
        lo, hi = k_sigma_range(sde)
        x, info = k.sample_dpm_adaptive(
            k_denoiser(score, sde),
            x_T * math.sqrt(1 + hi**2),
            lo,
            hi,
            rtol=tol,
            atol=tol,
            disable=True,
            return_info=True,
        )
        # It stops at sigma_min with x~ = x / alpha there: back to x.
        return x / math.sqrt(1 + lo**2), info["nfe"]

    out.append(Peer("k:dpm_adaptive", adaptive, adaptive=True))
    return out


def diffusers_eps_model(score: Score, sde: VPSDE, alphas_cumprod: torch.Tensor) -> Callable:
    """An exact :math:`\\varepsilon(x, \\tau)` for a diffusers scheduler (mapping: module doc)."""
    ac = alphas_cumprod.to(torch.float64)
    sigmas = torch.sqrt((1 - ac) / ac)
    index = torch.arange(len(sigmas), dtype=torch.float64)

    def model(x: torch.Tensor, timestep) -> torch.Tensor:
        tau = torch.as_tensor(timestep, dtype=torch.float64).reshape(1)
        i = tau.floor().clamp(0, len(sigmas) - 2).long()
        w = tau - index[i]
        sigma_tilde = (1 - w) * sigmas[i] + w * sigmas[i + 1]
        # diffusers' float32 alphas_cumprod (relative error <= 8e-7) put timestep 999 4e-8 past T
        t = edm_time(sde, sigma_tilde).clamp(max=sde.T)
        sigma = sde.sigma(t).to(x.device, x.dtype)
        return -sigma * score(x, t.to(x.device, x.dtype).expand(x.shape[0]))

    return model


def diffusers_peers(
    sde: VPSDE, spacings: tuple[str, ...] = ("linspace", "trailing"), train_steps: int = 1000
) -> list[Peer]:
    """diffusers' DDIM, DPM-Solver++(2M) (ODE and SDE), Euler, Heun and UniPC on the VP betas."""
    try:
        import diffusers
    except ImportError:
        print("diffusers is not installed: its schedulers are left out")
        return []
    diffusers.utils.logging.set_verbosity_error()
    betas = DiscreteVPSDE.from_sde(sde, train_steps).betas.numpy()
    common = {"num_train_timesteps": train_steps, "trained_betas": betas}
    schedulers = {
        "DDIM": (diffusers.DDIMScheduler, {"clip_sample": False}, 1),
        "DPM++2M": (diffusers.DPMSolverMultistepScheduler, {}, 1),
        "DPM++2M-SDE": (
            diffusers.DPMSolverMultistepScheduler,
            {"algorithm_type": "sde-dpmsolver++"},
            1,
        ),
        "Euler": (diffusers.EulerDiscreteScheduler, {}, 1),
        "Heun": (diffusers.HeunDiscreteScheduler, {}, 2),
        "UniPC": (diffusers.UniPCMultistepScheduler, {}, 1),
    }

    def make(cls, options, per_step, spacing):
        stochastic = options.get("algorithm_type", "").startswith("sde")

        def run(score, x_T, nfe, generator):
            scheduler = cls(**common, **options, timestep_spacing=spacing)
            # Heun: n steps cost 2n - 1 evaluations (its last step, to sigma = 0, is Euler's).
            n = (nfe + 1) // 2 if per_step == 2 else nfe
            if n < 2:
                return None
            scheduler.set_timesteps(n)
            model = diffusers_eps_model(score, sde, scheduler.alphas_cumprod)
            # The same x_T for everyone: x_T ~ N(0, I) at t = T is x~ = x_T / alpha for the
            # schedulers that work in x~ (init_noise_sigma = sqrt(sigma~^2 + 1) there).
            x = x_T * scheduler.init_noise_sigma
            noise = {"generator": generator} if stochastic else {}
            calls = 0
            for tau in scheduler.timesteps:
                eps = model(scheduler.scale_model_input(x, tau), tau)
                calls += 1
                x = scheduler.step(eps, tau, x, **noise).prev_sample
            return x, calls

        return run

    return [
        Peer(f"d:{name}[{spacing}]", make(*spec, spacing))
        for spacing in spacings
        for name, spec in schedulers.items()
    ]


def peers(sde: VPSDE, *, k_grids=("karras",), spacings=("linspace", "trailing")) -> list[Peer]:
    """All installed peers."""
    return k_diffusion_peers(sde, k_grids) + diffusers_peers(sde, spacings)


def _load_file(path, name: str) -> types.ModuleType | None:
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None:
        return None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def reference_peers(sde: VPSDE, directory: str) -> list[Peer]:
    """The authors' own DPM-Solver(++) and UniPC, imported from ``directory`` (not shipped here).

    ``directory`` holds ``dpm_solver_pytorch.py`` (github.com/LuChengTHU/dpm-solver) and/or
    ``uni_pc.py`` (github.com/wl-zhao/UniPC), as their repositories have them. Both run on the
    continuous linear VP schedule (``NoiseScheduleVP('linear', 0.1, 20)``, the benchmark's SDE) with
    their own time grids from ``T`` to ``t_min``, in float64 (their grids are built in the default
    dtype, set to float64 while they run). DPM-Solver(++) multistep orders 2 and 3 and singlestep
    order 3 ("DPM-Solver-fast") are tried with and without the final denoising step
    (``denoise_to_zero``, one evaluation of the budget), UniPC-2 and -3 with B(h) bh1 and bh2, each on
    every one of their grids (logSNR, time_uniform, time_quadratic); the best counts. Data are
    reshaped to ``(batch, d, 1, 1)`` for UniPC's image-shaped einsums.
    """
    from pathlib import Path

    out: list[Peer] = []
    root = Path(directory)
    dpm = _load_file(root / "dpm_solver_pytorch.py", "ref_dpm_solver")
    uni = _load_file(root / "uni_pc.py", "ref_uni_pc")
    if dpm is None and uni is None:
        print(f"no reference code found in {directory}: left out")
        return out
    t_end = float(sde.t_min)

    def noise_model(score):
        def model(x, t):
            t = t.to(torch.float64).reshape(-1)
            flat = x.reshape(x.shape[0], -1)
            sigma = sde.sigma(t).to(x.dtype)[:, None]
            return (-sigma * score(flat, t.to(x.dtype).expand(x.shape[0]))).reshape(x.shape)

        return model

    def make(lib, solver_cls, kind, order, skip, denoise, variant=None):
        def run(score, x_T, nfe, generator):
            steps = nfe - 1 if denoise else nfe
            if steps < order:
                return None
            default = torch.get_default_dtype()
            torch.set_default_dtype(torch.float64)
            try:
                ns = lib.NoiseScheduleVP("linear", continuous_beta_0=0.1, continuous_beta_1=20.0)
                fn = lib.model_wrapper(noise_model(score), ns, model_type="noise")
                if solver_cls == "dpm":
                    solver = lib.DPM_Solver(fn, ns, algorithm_type="dpmsolver++")
                    kwargs = {"method": kind}
                else:
                    solver = lib.UniPC(fn, ns, algorithm_type="data_prediction", variant=variant)
                    kwargs = {}
                x = x_T.reshape(x_T.shape[0], -1, 1, 1) if solver_cls == "uni" else x_T
                with contextlib.redirect_stdout(io.StringIO()):  # UniPC prints every step
                    x = solver.sample(
                        x.clone(),
                        steps=steps,
                        t_start=sde.T,
                        t_end=t_end,
                        order=order,
                        skip_type=skip,
                        denoise_to_zero=denoise,
                        **kwargs,
                    )
            finally:
                torch.set_default_dtype(default)
            return x.reshape(x_T.shape), nfe

        return run

    skips = ("logSNR", "time_uniform", "time_quadratic")
    for denoise in (False, True):
        tail = "+denoise" if denoise else ""
        if dpm is not None:
            for kind, order in (("multistep", 3), ("multistep", 2), ("singlestep", 3)):
                for skip in skips:
                    name = f"ref:dpm-solver++ {kind[:5]}{order}[{skip}{tail}]"
                    out.append(Peer(name, make(dpm, "dpm", kind, order, skip, denoise)))
        if uni is not None and not denoise:  # UniPC's own last step ends lower-order instead
            for variant in ("bh1", "bh2"):
                for order in (2, 3):
                    for skip in skips:
                        name = f"ref:unipc-{order} {variant}[{skip}{tail}]"
                        out.append(
                            Peer(name, make(uni, "uni", None, order, skip, denoise, variant))
                        )
    return out
