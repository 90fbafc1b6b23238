"""The example scripts run, save their figure, and print numbers that agree with the exact answers.

Each script runs as README and the docs build run it: a fresh interpreter with no arguments (the
quick default), headless matplotlib, in a temporary working directory whose ``outputs/`` receives
the figure. The printed numbers are checked against closed forms, so a script whose maths broke
fails here even if it still draws a picture.
"""

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run_example(name: str, tmp_path: Path, *args: str) -> str:
    """Run ``examples/<name>.py`` in ``tmp_path``; return its stdout after checking its figure."""
    env = dict(os.environ, MPLBACKEND="Agg", OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / f"{name}.py"), *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    figure = tmp_path / "outputs" / f"{name}.png"
    assert figure.is_file(), f"{name} did not write {figure}"
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return result.stdout


def numbers(pattern: str, text: str) -> list[float]:
    found = [float(m) for m in re.findall(pattern, text)]
    assert found, f"{pattern!r} not in the output:\n{text}"
    return found


def test_demo_2d_reaches_the_monte_carlo_floor(tmp_path):
    out = run_example("demo_2d", tmp_path)
    (error,) = numbers(r"reverse SDE ([\d.]+)", out)
    (floor,) = numbers(r"Monte-Carlo floor ([\d.]+)", out)
    # 4000 samples in 2D: the floor is a few hundredths; a wrong score or drift is tenths or more
    assert 0.005 < floor < 0.06
    assert error < 2 * floor


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_demo_2d_on_gpu(tmp_path):
    out = run_example("demo_2d", tmp_path, "--device", "cuda")
    (error,) = numbers(r"reverse SDE ([\d.]+)", out)
    (floor,) = numbers(r"Monte-Carlo floor ([\d.]+)", out)
    assert error < 2 * floor


def test_1d_mixture_fokker_planck_matches_closed_form(tmp_path):
    out = run_example("plot_1d_mixture_fp", tmp_path)
    (gap,) = numbers(r"max \|p - p_exact\| = ([\d.e+-]+)", out)
    assert gap < 5e-3  # grid solution vs closed-form p_t, densities of order 1
    w1 = numbers(r"(?:forward|reverse) ([\d.]+)", out)
    assert len(w1) == 8
    assert max(w1) < 0.03  # 20,000 samples against the exact p_t


def test_double_well_euler_maruyama_matches_fokker_planck(tmp_path):
    out = run_example("plot_double_well", tmp_path)
    w1 = numbers(r"W1 ([\d.]+)", out)
    assert len(w1) == 6 and max(w1) < 0.03
    masses = re.findall(r"EM ([\d.]+), FP ([\d.]+)", out)
    for em, fp in masses:
        assert abs(float(em) - float(fp)) < 0.02
    # constant noise keeps the wells balanced; noise in the right well empties it
    assert abs(float(masses[2][1]) - 0.5) < 0.01
    assert float(masses[5][1]) > 0.65


def test_ddpm_update_equals_ancestral_step(tmp_path):
    out = run_example("plot_ddpm_equivalence", tmp_path)
    (gap,) = numbers(r"max \|x_a - x_b\| = ([\d.e+-]+)", out)
    assert gap < 1e-10  # the same update, float64 rounding only
    cosine = numbers(r"cosine N=\s*\d+: max \|alpha_bar_i - alpha_bar\(t_i\)\| = ([\d.e+-]+)", out)
    assert max(cosine) < 1e-12  # improved DDPM's betas are defined from alpha_bar
    linear = numbers(r"linear N=\s*\d+: max \|alpha_bar_i - alpha_bar\(t_i\)\| = ([\d.e+-]+)", out)
    assert linear[0] < 5e-3 and linear[1] > 10 * linear[0]  # O(1/N): N = 1000, then N = 20
    (w1,) = numbers(r"DDPM samples to the data: ([\d.]+)", out)
    (floor,) = numbers(r"floor ([\d.]+)", out)
    assert w1 < 3 * floor


def test_elbo_terms_exact_kernels_give_the_data_entropy(tmp_path):
    out = run_example("plot_elbo_terms", tmp_path)

    def bound(name):
        (value,) = numbers(name + r"\s+-ELBO\s+([-\d.]+) nats", out)
        return value

    (entropy,) = numbers(r"data entropy -E log q\(x0\)\s+([-\d.]+) nats", out)
    # exact reverse kernels: the bound is the data's entropy (the prior mismatch is ~1e-5 nats)
    assert abs(bound("exact denoiser, exact variance") - entropy) < 0.05
    # fixed variances pay for the mismatch, beta_tilde most on data this wide
    assert bound("exact denoiser, beta_tilde") > bound("exact denoiser, beta")
    assert bound("exact denoiser, beta") > bound("exact denoiser, exact variance") + 0.02
    # the learned variance beats the fixed one of the same network
    assert bound("trained MLP, learned variance") < bound("trained MLP, beta_tilde") - 1


@pytest.mark.parametrize("script", sorted(EXAMPLES.glob("*.py")), ids=lambda p: p.name)
def test_every_example_has_a_gallery_title(script):
    """sphinx-gallery needs a module docstring that opens with a title underlined by ``=``."""
    docstring = ast.get_docstring(ast.parse(script.read_text()), clean=False)
    assert docstring is not None, f"{script.name} has no module docstring"
    lines = docstring.strip("\n").splitlines()
    assert len(lines) >= 2 and lines[1] == "=" * len(lines[0]) and lines[0].strip(), (
        f"{script.name}: the docstring must start with 'Title' and a line of '=' as long"
    )


@pytest.mark.slow
def test_controlnet_starts_at_the_base_and_reads_the_hint(tmp_path):
    out = run_example("plot_controlnet", tmp_path)
    assert "equals the base bit for bit: True" in out
    assert "scale 0 gives the base's samples bit for bit: True" in out
    found = re.search(r"own hint ([\d.]+), shuffled hint ([\d.]+), base ([\d.]+)", out)
    assert found, out
    own, shuffled, base = map(float, found.groups())
    # its own hint lowers the held-out loss; a wrong hint misleads it
    assert own < 0.95 * base and shuffled > base
    (base_rmse,), (controlled_rmse,) = (
        numbers(rf"hint RMSE of the {name} samples: ([\d.]+)", out)
        for name in (r"base \(no control\)", "ControlNet")
    )
    assert controlled_rmse < base_rmse


def test_guidance_sharpens_every_class_and_the_digits(tmp_path):
    out = run_example("plot_guidance", tmp_path)
    masses = numbers(r"mass of the class ([\d.]+)", out)
    assert len(masses) == 12  # three classes, w = -1, 0, 1, 4
    for c in range(3):
        m = masses[4 * c : 4 * c + 4]
        assert m[0] < 0.45 and all(b > a for a, b in zip(m[:-1], m[1:], strict=True)), m
        assert m[-1] > 0.99
    accuracy = numbers(r"judge accuracy ([\d.]+)", out)
    assert accuracy[0] > 0.9 and accuracy[1] >= accuracy[0] and accuracy[2] > 0.99  # w = 0, 1, 3
    found = re.search(r"w = 8: judge accuracy [\d.]+, pixel range \[([-\d.]+), ([-\d.]+)\]", out)
    assert found, out
    lo, hi = (float(v) for v in found.groups())
    assert -1.1 < lo and hi < 1.1  # thresholding keeps the samples in the data range


def test_fast_sampling_fitted_grid_beats_the_log_snr_grid(tmp_path):
    out = run_example("plot_fast_sampling", tmp_path)
    (dpm,) = numbers(r"DPM-Solver\+\+\(2M\), log-SNR grid: W1 ([\d.]+) with 6 evaluations", out)
    (fitted,) = numbers(r"UniPC-2, fitted grid: W1 ([\d.]+) with 6 evaluations", out)
    (cost,) = numbers(r"cost (\d+) evaluations", out)
    # measured 0.023 against 0.102; 20,000 samples put the Monte-Carlo floor near 0.012
    assert fitted < 0.4 * dpm and fitted < 0.04
    assert 6 * 32 < cost < 5000  # the teacher's 32 x 8 evaluations and the refinement's runs
