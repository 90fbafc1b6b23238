"""The noise-conditional classifier: networks, its cross-entropy on x_t of the SDE, and a trained
classifier's guidance gradient against the exact oracle."""

from __future__ import annotations

import pytest
import torch

from sdekit.classifier import NoisyClassifierLoss
from sdekit.guidance import classifier_gradient, classifier_guidance
from sdekit.linear import VESDE, VPSDE
from sdekit.mixture import GaussianMixture
from sdekit.networks import MLP, MLPClassifier, UNetClassifier

F64 = torch.float64
MIX = GaussianMixture(
    [0.3, 0.2, 0.25, 0.25],
    [[-2.0, 0.0], [1.5, 1.0], [0.5, -1.5], [0.0, 1.5]],
    [0.4, 0.3, 0.5, 0.35],
    labels=[0, 1, 0, 1],
)


def test_classifier_networks_give_logits_and_refuse_bad_shapes():
    torch.manual_seed(0)
    unet = UNetClassifier(10, 1, 8, base_channels=16)
    x, t = torch.randn(3, 1, 8, 8), torch.rand(3)
    assert unet(x, t).shape == (3, 10)
    mlp = MLPClassifier(2, 3, hidden=16)
    assert mlp(torch.randn(5, 2), torch.rand(5)).shape == (5, 3)
    assert unet.num_classes == 10 and mlp.num_classes == 3
    with pytest.raises(ValueError, match="x must have shape \\(batch, 1, 8, 8\\)"):
        unet(torch.randn(3, 1, 4, 4), t)
    with pytest.raises(ValueError, match="num_classes must be an integer >= 2"):
        MLPClassifier(2, 1)
    with pytest.raises(ValueError, match="image_size must be a positive multiple"):
        UNetClassifier(10, 1, 6, channel_mults=(1, 2, 2))


class Recorder(torch.nn.Module):
    """A 'classifier' that records what it is shown and answers uniform logits."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x, t):
        self.seen.append((x.detach(), t.detach()))
        return torch.zeros(x.shape[0], 4, dtype=x.dtype)


@pytest.mark.parametrize("sde", [VPSDE(), VESDE()], ids=["vp", "ve"])
def test_the_loss_classifies_x_t_of_the_sde_marginal(sde):
    """x_t = alpha(t) x0 + sigma(t) eps with eps ~ N(0, I) and t in [t_min, T]; uniform logits
    give the cross-entropy log C."""
    rec = Recorder()
    x0 = torch.full((20000, 3), 0.7, dtype=F64)
    labels = torch.randint(0, 4, (20000,), generator=torch.Generator().manual_seed(0))
    loss = NoisyClassifierLoss(sde)(
        rec, x0, cond=labels, generator=torch.Generator().manual_seed(1)
    )
    torch.testing.assert_close(loss, torch.log(torch.tensor(4.0, dtype=F64)))
    ((x_t, t),) = rec.seen
    assert float(t.min()) >= sde.t_min and float(t.max()) <= sde.T
    assert abs(float(t.mean()) - (sde.t_min + sde.T) / 2) < 0.02 * sde.T  # uniform
    alpha, sigma = sde.marginal(t)
    eps = (x_t - alpha[:, None] * x0) / sigma[:, None]
    assert abs(float(eps.mean())) < 0.02 and abs(float(eps.var()) - 1) < 0.03
    # the value is the cross-entropy of the logits at the labels
    per = NoisyClassifierLoss(sde).per_sample(
        MIX.classifier_fn(sde), x0[:8, :2], labels[:8] % 2, t[:8], eps[:8, :2]
    )
    x8 = alpha[:8, None] * x0[:8, :2] + sigma[:8, None] * eps[:8, :2]
    expected = -MIX.log_posterior(x8, t[:8], sde).gather(1, (labels[:8] % 2)[:, None])[:, 0]
    torch.testing.assert_close(per, expected)


def test_loss_and_gradient_bad_input():
    sde = VPSDE()
    loss = NoisyClassifierLoss(sde)
    clf = MLPClassifier(2, 2, hidden=8)
    x0 = torch.randn(4, 2)
    with pytest.raises(ValueError, match="cond \\(the class labels\\) is required"):
        loss(clf, x0)
    with pytest.raises(ValueError, match="labels must lie in \\[0, 2\\)"):
        loss(clf, x0, cond=torch.tensor([0, 1, 2, 0]))
    with pytest.raises(ValueError, match="t_sampling must be one of"):
        NoisyClassifierLoss(sde, t_sampling="importance")
    with pytest.raises(ValueError, match="classifier returns 2 classes, but num_classes is 3"):
        classifier_gradient(clf, x0, torch.rand(4), torch.zeros(4, dtype=torch.long), 3)
    with pytest.warns(UserWarning, match="training mode"):
        classifier_guidance(MIX.score_fn(sde), clf.train(), scale=1.0)
    with pytest.raises(ValueError, match="classifier has 2 classes, but model has 3"):
        classifier_guidance(MLP(2, num_classes=3), clf.eval(), scale=1.0, conditional_model=True)


def test_a_trained_classifier_points_its_gradient_the_oracle_way():
    """An MLP classifier trained on x_t of the VP SDE (cross-entropy, 600 steps): its guidance
    gradient grad log p_phi(y | x_t, t) agrees in direction with the exact grad log p_t(y | x)
    (positive dot product for 95% of the states where it is not zero, median cosine > 0.9; measured
    99.5% and 0.99), and its cross-entropy is within 0.1 nat of the exact posterior's, the loss's
    minimum (measured 0.31 against 0.26; uniform logits give 0.69)."""
    sde = VPSDE()
    torch.manual_seed(0)
    clf = MLPClassifier(2, 2, hidden=64, depth=3)
    loss_fn = NoisyClassifierLoss(sde)
    opt = torch.optim.Adam(clf.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(1)
    for _ in range(600):
        x0, y = MIX.sample_with_labels(256, generator=g, dtype=torch.float32)
        loss = loss_fn(clf, x0, cond=y, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    clf.eval()
    x0, y = MIX.sample_with_labels(3000, generator=g)
    t = torch.tensor([0.05, 0.2, 0.5], dtype=F64).repeat(1000)
    noise = torch.randn(3000, 2, generator=g, dtype=F64)
    x_t = sde.perturb(x0, t, noise)
    trained = classifier_gradient(clf, x_t.float(), t.float(), y).double()
    exact = MIX.log_posterior_grad(x_t, y, t, sde)
    # where the exact posterior is not saturated (p(y | x) = 1 to round-off has no gradient)
    keep = exact.norm(dim=1) > 1e-2
    assert int(keep.sum()) > 1500
    trained, exact = trained[keep], exact[keep]
    dot = (trained * exact).sum(1)
    cosine = dot / (trained.norm(dim=1) * exact.norm(dim=1))
    assert float((dot > 0).double().mean()) > 0.95
    assert float(cosine.median()) > 0.9
    with torch.no_grad():
        trained_ce = float(loss_fn.per_sample(clf, x0.float(), y, t.float(), noise.float()).mean())
    exact_ce = float(loss_fn.per_sample(MIX.classifier_fn(sde), x0, y, t, noise).mean())
    assert trained_ce < exact_ce + 0.1, (trained_ce, exact_ce)
