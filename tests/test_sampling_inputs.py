"""sample() with bad input and bad models: every mistake is a clear error, nothing passes silently."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import sdekit
from sdekit import VPSDE, GaussianMixture
from sdekit.sampling import SAMPLERS

SDE = VPSDE()
TARGET = GaussianMixture([0.5, 0.5], [[-2.0, 0.0], [2.0, 0.0]], 0.3)
SCORE = TARGET.score_fn(SDE)


@pytest.mark.parametrize(
    "x_T, message",
    [
        (100, "x_T_or_shape must be a tensor"),
        ((0, 2), "x_T_or_shape must be a tensor"),
        ((4, 2.5), "x_T_or_shape must be a tensor"),
        (torch.zeros(4, 2, dtype=torch.int64), "float32 or float64"),
        (torch.zeros(4, 2, dtype=torch.bfloat16), "float32 or float64"),
        (torch.zeros(4), r"shape \(batch, \*data_shape\)"),
        (torch.zeros(0, 2), "batch >= 1"),
        (torch.tensor([[0.0, float("nan")]]), "x_T contains NaN"),
        (torch.tensor([[float("inf"), 0.0]]), "x_T contains NaN"),
    ],
)
def test_bad_starting_states(x_T, message):
    with pytest.raises(ValueError, match=message):
        sdekit.sample(SCORE, SDE, x_T, steps=2)


def test_bad_generators_and_methods():
    with pytest.raises(ValueError, match="generator must be a torch.Generator"):
        sdekit.sample(SCORE, SDE, (4, 2), generator=0)
    gens = [torch.Generator().manual_seed(i) for i in range(3)]
    with pytest.raises(ValueError, match="one per sample: got 3 for a batch of 4"):
        sdekit.sample(SCORE, SDE, (4, 2), generator=gens)
    with pytest.raises(ValueError, match="one per sample: got 3 for a batch of 4"):
        sdekit.sample(SCORE, SDE, torch.zeros(4, 2), generator=gens, method="ancestral")
    with pytest.raises(ValueError, match="method must be one of"):
        sdekit.sample(SCORE, SDE, (4, 2), method="bogus")
    with pytest.raises(ValueError, match="method must be a sampler name"):
        sdekit.sample(SCORE, SDE, (4, 2), method=None)
    with pytest.raises(ValueError, match="dtype must be"):
        sdekit.sample(SCORE, SDE, (4, 2), dtype=torch.float16)
    with pytest.raises(ValueError, match="sde must be an sdekit.SDE"):
        sdekit.sample(SCORE, "vp", torch.zeros(4, 2))


def test_a_general_sde_lists_the_methods_that_work():
    class Wiener(sdekit.SDE):
        def drift(self, x, t):
            return torch.zeros_like(x)

        def diffusion(self, x, t):
            return torch.ones_like(t)

        def prior_sample(self, shape, **kwargs):
            return torch.randn(shape)

    general = sorted(name for name, spec in SAMPLERS.items() if not spec.needs_marginal)
    assert {"euler_maruyama", "ode", "adaptive_sde"} <= set(general)
    with pytest.raises(
        ValueError, match=f"methods for a general SDE: {general}".replace("[", r"\[")
    ):
        sdekit.sample(lambda x, t: -x, Wiener(), (4, 2), method="dpmpp_2m")


@pytest.mark.parametrize(
    "output, error, message",
    [
        (lambda x: x[:, :1], ValueError, r"of shape \(4, 2\) \(like x\), got \(4, 1\)"),
        (lambda x: (x,), TypeError, "got tuple: return the tensor itself"),
        (lambda x: x.numpy(), TypeError, "got numpy.ndarray"),
        (lambda x: x.flatten(), ValueError, r"got \(8,\)"),
    ],
)
@pytest.mark.parametrize("method", ["dpmpp_2m", "euler_maruyama", "ode", "adaptive_sde"])
def test_a_model_output_of_the_wrong_type_or_shape_raises(output, error, message, method):
    with pytest.raises(error, match=message):
        sdekit.sample(lambda x, t: output(x), SDE, torch.zeros(4, 2), method=method, steps=3)


@pytest.mark.parametrize(
    "method", ["dpmpp_2m", "euler_maruyama", "heun", "pc", "adaptive_sde", "ode"]
)
def test_a_model_that_returns_nan_is_named_at_its_evaluation(method):
    calls = []

    def model(x, t):
        calls.append(float(t[0]))
        out = SCORE(x, t)
        return out * float("nan") if len(calls) == 3 else out

    with pytest.raises(FloatingPointError, match=r"model returned NaN or inf at its evaluation 3 "):
        sdekit.sample(model, SDE, (8, 2), method=method, steps=6)


def test_a_model_nan_that_does_not_reach_the_samples_is_still_reported():
    """An inf in a discarded output still means the model is broken at that time."""
    calls = []

    def model(x, t):
        calls.append(1)
        out = SCORE(x, t)
        return (
            torch.where(torch.arange(len(x))[:, None] == 0, float("inf"), out)
            if len(calls) == 2
            else out
        )

    with pytest.raises(FloatingPointError, match="evaluation 2 of"):
        sdekit.sample(model, SDE, (4, 2), method="dpmpp_2m", steps=4)


def test_samples_that_blow_up_with_a_finite_model_name_the_step():
    """A model output of 1e38 (finite in float32) makes the first Euler–Maruyama step overflow."""

    def huge(x, t):
        return torch.full_like(x, 1e38)

    with pytest.raises(FloatingPointError, match=r"became NaN or inf first after step 1 of 3"):
        sdekit.sample(huge, SDE, (4, 2), method="euler_maruyama", steps=3)


def test_the_condition_is_passed_unchanged_and_checked():
    seen = []

    def model(x, t, cond):
        seen.append(cond)
        return SCORE(x, t)

    labels = torch.arange(4)
    for method in ["dpmpp_2m", "heun", "adaptive_sde", "pc", "ode"]:
        seen.clear()
        sdekit.sample(model, SDE, (4, 2), method=method, steps=3, cond=labels)
        assert seen and all(c is labels for c in seen)
    hint = {"labels": labels, "hint": torch.zeros(4, 1, 3, 3)}
    sdekit.sample(model, SDE, (4, 2), steps=2, cond=hint)
    assert seen[-1] is hint
    with pytest.raises(ValueError, match=r"cond must have the batch size 4"):
        sdekit.sample(model, SDE, (4, 2), cond=torch.arange(3))
    with pytest.raises(ValueError, match=r"cond\['hint'\] must have the batch size 4"):
        sdekit.sample(model, SDE, (4, 2), cond={"hint": torch.zeros(2, 1)})
    with pytest.raises(ValueError, match=r"cond must be a tensor"):
        sdekit.sample(model, SDE, (4, 2), cond=[0, 1, 2, 3])
    with pytest.raises(TypeError):  # an unconditional model given a condition: Python says so
        sdekit.sample(SCORE, SDE, (4, 2), cond=labels)


@pytest.mark.parametrize(
    "method", sorted(n for n, s in SAMPLERS.items() if s.step_callback == "replace")
)
def test_a_callback_can_replace_the_state_after_every_step(method):
    """Pinning coordinate 0 to 0.25 after every step: the samples end with it (a stochastic
    method's final Tweedie step is switched off), and the callback sees every step."""
    steps, seen = 4, []

    def pin(i, x):
        seen.append(i)
        x = x.clone()
        x[:, 0] = 0.25
        return x

    required = {"v": 0.5} if method in ("ancestral_learned", "ddim_learned") else {}
    x, info = sdekit.sample(
        SCORE, SDE, (5, 2), method=method, steps=steps, callback=pin, denoise_final=False,
        return_trajectory=True, **required,
    )  # fmt: skip
    assert seen == list(range(steps))
    assert torch.equal(x[:, 0], torch.full((5,), 0.25))
    assert torch.equal(info.trajectory[1:, :, 0], torch.full((steps, 5), 0.25))


def test_a_callback_is_refused_where_it_cannot_replace_the_state():
    with pytest.raises(ValueError, match="cannot replace its state"):
        sdekit.sample(SCORE, SDE, (4, 2), method="ode", callback=lambda i, x: x)
    with pytest.raises(ValueError, match="takes no callback"):
        sdekit.sample(SCORE, SDE, (4, 2), method="adaptive_sde", return_trajectory=True)
    with pytest.raises(ValueError, match="callback must return None or a tensor shaped like"):
        sdekit.sample(SCORE, SDE, (4, 2), steps=2, callback=lambda i, x: x[:1])
    x, info = sdekit.sample(SCORE, SDE, (4, 2), method="ode", return_trajectory=True, steps=3)
    assert info.trajectory.shape == (4, 4, 2)


def test_numpy_scores_and_lists_are_not_silently_accepted():
    with pytest.raises(TypeError, match="got numpy.ndarray"):
        sdekit.sample(lambda x, t: np.zeros((4, 2)), SDE, torch.zeros(4, 2))
