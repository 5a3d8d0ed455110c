"""The math of training/objective.py against theory: closed forms, Monte Carlo, and a
linear-Gaussian model where log p(x) and the posterior p(z|x) are known exactly."""

import math

import pytest
import torch

from training import objective


@pytest.fixture(autouse=True)
def float64():
    """Exact comparisons need double precision; restored after each test (it is global state)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def test_kl_closed_form_matches_monte_carlo():
    g = torch.Generator().manual_seed(0)
    mean = torch.randn(4, 3, generator=g)
    log_var = torch.randn(4, 3, generator=g) * 0.5
    eps = torch.randn(200_000, 4, 3, generator=g)  # (K, B, Z)
    z = objective.reparameterize(mean, log_var, eps)
    mc = (objective.log_normal_diag(z, mean, log_var) - objective.log_standard_normal(z)).mean(0)  # (B,)
    closed = objective.kl_to_standard_normal(mean, log_var)
    assert torch.allclose(mc, closed, atol=0.02), (mc, closed)
    assert torch.all(closed >= 0)
    assert objective.kl_to_standard_normal(torch.zeros(1, 5), torch.zeros(1, 5)).item() == 0.0


def test_reparameterize_has_the_right_moments():
    mean, log_var = torch.tensor([[1.0, -2.0]]), torch.tensor([[0.0, math.log(4.0)]])
    z = objective.reparameterize(mean, log_var, torch.randn(100_000, 1, 2, generator=torch.Generator().manual_seed(1)))
    assert torch.allclose(z.mean((0, 1)), mean[0], atol=0.02)
    assert torch.allclose(z.std((0, 1)), torch.tensor([1.0, 2.0]), atol=0.02)


def test_bernoulli_log_likelihood_is_the_with_logits_form():
    logits = torch.tensor([[-30.0, -2.0, 0.0, 3.0, 40.0]])
    x = torch.tensor([[0.0, 1.0, 1.0, 0.0, 1.0]])
    expected = -torch.nn.functional.binary_cross_entropy_with_logits(logits, x, reduction="sum")
    assert objective.bernoulli_log_likelihood(logits, x).item() == pytest.approx(expected.item(), abs=1e-9)
    assert torch.isfinite(
        objective.bernoulli_log_likelihood(torch.tensor([[1e4, -1e4]]), torch.tensor([[0.0, 1.0]]))
    ).all()


def test_gaussian_log_likelihood_keeps_its_constants():
    x = torch.tensor([[0.3, 0.7]])
    got = objective.gaussian_log_likelihood(torch.tensor([[0.5, 0.5]]), torch.tensor(math.log(0.2)), x)
    expected = torch.distributions.Normal(0.5, 0.2).log_prob(x).sum()
    assert got.item() == pytest.approx(expected.item(), abs=1e-12)


def _toy_decoder(x, weight):
    """A small nonlinear Bernoulli decoder: z (K, B, Z) -> log p(x|z) (K, B)."""
    return lambda z: objective.bernoulli_log_likelihood(torch.tanh(z @ weight) * 3.0, x)


def _toy(seed=0, b=6, z_dim=3, d=12):
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(b, d, generator=g) < 0.5).double()
    weight = torch.randn(z_dim, d, generator=g)
    mean, log_var = torch.randn(b, z_dim, generator=g) * 0.5, torch.randn(b, z_dim, generator=g) * 0.3 - 0.5
    return g, x, weight, mean, log_var


def test_iwae_with_one_sample_equals_the_elbo():
    g, x, weight, mean, log_var = _toy()
    terms = objective.evidence(mean, log_var, torch.randn(1, 6, 3, generator=g), _toy_decoder(x, weight))
    assert torch.equal(terms.log_likelihood, terms.elbo)
    assert torch.allclose(terms.elbo, terms.reconstruction - terms.kl)
    # The textbook one-sample estimator agrees with the ELBO in expectation.
    eps = torch.randn(100_000, 6, 3, generator=g)
    single = torch.stack([objective.plain_iwae(mean, log_var, e[None], _toy_decoder(x, weight)) for e in eps[:2000]])
    closed = objective.evidence(mean, log_var, eps, _toy_decoder(x, weight)).elbo
    assert torch.allclose(single.mean(0), closed, atol=0.15)


def test_iwae_grows_with_k_and_gap_is_never_negative():
    g, x, weight, mean, log_var = _toy(seed=3)
    means = []
    for k in (1, 5, 50, 500):
        runs = torch.stack(
            [
                objective.evidence(
                    mean, log_var, torch.randn(k, 6, 3, generator=g), _toy_decoder(x, weight)
                ).log_likelihood
                for _ in range(200)
            ]
        )  # (R, B)
        means.append(runs.mean())
    assert all(a < b for a, b in zip(means, means[1:])), means
    terms = objective.evidence(mean, log_var, torch.randn(64, 6, 3, generator=g), _toy_decoder(x, weight))
    assert torch.all(terms.log_likelihood >= terms.elbo)


def test_control_variate_iwae_has_the_plain_estimators_expectation():
    g, x, weight, mean, log_var = _toy(seed=5)
    eps = torch.randn(4000, 8, 6, 3, generator=g)  # R draws of (K=8, B, Z)
    ours = torch.stack([objective.evidence(mean, log_var, e, _toy_decoder(x, weight)).log_likelihood for e in eps])
    plain = torch.stack([objective.plain_iwae(mean, log_var, e, _toy_decoder(x, weight)) for e in eps])
    assert torch.allclose(ours.mean(0), plain.mean(0), atol=0.05)


class LinearGaussian:
    """p(z) = N(0, I), p(x|z) = N(Wz + b, s² I): log p(x) and p(z|x) in closed form."""

    def __init__(self, z_dim=2, d=5, s=0.5, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.W = torch.randn(d, z_dim, generator=g)
        self.b = torch.randn(d, generator=g)
        self.s = s
        self.x = self.b + torch.randn(3, z_dim, generator=g) @ self.W.T + s * torch.randn(3, d, generator=g)  # (B, D)

    def log_marginal(self):
        cov = self.W @ self.W.T + self.s**2 * torch.eye(len(self.b))
        return torch.distributions.MultivariateNormal(self.b, cov).log_prob(self.x)  # (B,)

    def posterior(self):
        precision = torch.eye(self.W.shape[1]) + self.W.T @ self.W / self.s**2
        cov = torch.linalg.inv(precision)
        means = (self.x - self.b) @ self.W @ cov / self.s**2  # (B, Z)
        return means, cov

    def log_px_given_z(self, z):  # (K, B, Z) -> (K, B)
        return objective.gaussian_log_likelihood(z @ self.W.T + self.b, torch.tensor(math.log(self.s)), self.x)

    def analytic_elbo(self, mean, log_var):
        """E_q[log p(x|z)] − KL(q‖p(z)), the expectation in closed form."""
        expected = objective.gaussian_log_likelihood(mean @ self.W.T + self.b, torch.tensor(math.log(self.s)), self.x)
        expected = expected - (self.W.square() @ log_var.exp().T).sum(0) / (2 * self.s**2)
        return expected - objective.kl_to_standard_normal(mean, log_var)


def _kl_diag_to_full(mean, log_var, p_mean, p_cov):
    q = torch.distributions.MultivariateNormal(mean, torch.diag_embed(log_var.exp()))
    return torch.distributions.kl_divergence(q, torch.distributions.MultivariateNormal(p_mean, p_cov))


def test_linear_gaussian_gap_is_the_kl_to_the_true_posterior():
    model = LinearGaussian()
    post_mean, post_cov = model.posterior()
    mean = post_mean + 0.3  # a deliberately imperfect q
    log_var = torch.log(torch.diagonal(post_cov)).expand_as(mean) + 0.2
    elbo = model.analytic_elbo(mean, log_var)
    log_px = model.log_marginal()
    assert torch.all(elbo <= log_px)
    gap = _kl_diag_to_full(mean, log_var, post_mean, post_cov)
    assert torch.allclose(log_px - elbo, gap, atol=1e-9), (log_px - elbo, gap)
    # The Monte-Carlo ELBO of objective.evidence converges to the analytic one.
    g = torch.Generator().manual_seed(0)
    mc = objective.evidence(mean, log_var, torch.randn(200_000, 3, 2, generator=g), model.log_px_given_z)
    assert torch.allclose(mc.elbo, elbo, atol=0.02)


def test_linear_gaussian_iwae_converges_to_log_px():
    model = LinearGaussian(seed=1)
    post_mean, post_cov = model.posterior()
    mean, log_var = post_mean - 0.2, torch.log(torch.diagonal(post_cov)).expand_as(post_mean)
    log_px = model.log_marginal()
    g = torch.Generator().manual_seed(2)
    errors = []
    for k in (1, 10, 100, 20_000):
        est = torch.stack(
            [
                objective.evidence(
                    mean, log_var, torch.randn(k, 3, 2, generator=g), model.log_px_given_z
                ).log_likelihood
                for _ in range(20)
            ]
        ).mean(0)
        errors.append((log_px - est).abs().max().item())
    assert errors[-1] < 0.01 and errors[-1] < errors[0] / 10, errors
    assert all(a > b for a, b in zip(errors, errors[1:])), errors


def test_the_importance_weighted_loss_is_minus_the_iwae_estimate_once_beta_is_one():
    torch.manual_seed(0)
    mean, log_var = torch.randn(6, 3), torch.randn(6, 3) * 0.3
    eps = torch.randn(5, 6, 3)
    x = (torch.rand(6, 10) < 0.5).float()
    weight = torch.randn(3, 10)
    terms = objective.evidence(mean, log_var, eps, lambda z: objective.bernoulli_log_likelihood(z @ weight, x))
    assert torch.allclose(objective.loss(terms, 1.0, importance_weighted=True), -terms.log_likelihood.mean())
    assert objective.loss(terms, 1.0, importance_weighted=True) < objective.loss(terms, 1.0)  # L_K ≥ ELBO
    # During a KL warm-up it is the β-ELBO whichever bound is trained.
    assert torch.equal(objective.loss(terms, 0.5, importance_weighted=True), objective.loss(terms, 0.5))
