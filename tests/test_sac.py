"""Tests of algos/sac.py: the contract every algorithm file passes (contract.py), on the
continuous twins of its test environments, with the replay buffer's tests, and the tests of
what only SAC has: the squashed Gaussian's log-probability and the temperature."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from algo_files import load_algo
from contract import (ContinuousActionTests, ContractTests, CorrelatedNoiseTests,
                      RandomActionsTests, ReplayBufferTests, continuous_replay_algo, run_small,
                      squashed_gaussian_actor_head)

SAC = continuous_replay_algo(
    "sac", help_flags=("--no-autotune", "--alpha", "--noise-correlation"),
    help_text="the temperature with --no-autotune",
    bad_inputs=((["--alpha", 0], ["--alpha", "positive"]),
                (["--noise-correlation", 1.0], ["--noise-correlation", "[0, 1)"])),
    loss_tags=("qf_loss", "qf1_loss", "qf2_loss", "qf1_values", "qf2_values", "actor_loss",
               "alpha", "alpha_loss"),
    head=squashed_gaussian_actor_head,
    # targets that follow fast enough for 1000 gradient steps to reach the chain's values, and
    # an entropy bonus too small to move them
    chain=dict(tau=0.1, autotune=False, alpha=1e-3),
    learn_flags=("--total-timesteps", 10_000, "--batch-size", 64),
    changed_flags=(("autotune", False), ("tau", 0.5), ("noise_correlation", 0.9)),
)


class TestContract(ContinuousActionTests, RandomActionsTests, CorrelatedNoiseTests,
                   ReplayBufferTests, ContractTests):
    algo = SAC
    values_tag = "qf1_values"
    policy_action_std_below = None
    noise_std_flag = None  # the noise is the standard normal of the policy's sample
    # no continuous-action gymnax environment has image observations: not collected here
    test_image_observations_train = None

    def action_of_noise(self, module, actor, obs, noise):
        """tanh(mean + std noise), the squashed sample of that noise."""
        return module.reparameterised_action(actor, obs, noise, jnp.ones_like(noise))[0]


@pytest.fixture(scope="module")
def sac():
    return load_algo("sac")


def test_log_prob_is_that_of_the_action_in_the_environment_units(sac):
    """log pi of the environment's action y = low + (tanh(u) + 1) scale, u ~ N(mean, std^2):
    the Gaussian density of u minus log |det dy/du|, the Jacobian taken by JAX, on bounds of
    two different scales (the scale term is what rejax leaves out)."""
    actor = sac.Actor(jax.random.key(0), (3,), 2)
    obs = jnp.array([0.3, -0.2, 0.5])
    low, high = jnp.array([-2.0, 0.0]), jnp.array([2.0, 6.0])
    scale = 0.5 * (high - low)  # [2, 3]
    mean, log_std = actor(obs)
    for key in jax.random.split(jax.random.key(1), 5):
        action, log_prob = sac.sample_action(actor, obs, key, scale)
        u = jnp.arctanh(action)
        to_env = lambda u: low + (jnp.tanh(u) + 1) * scale  # noqa: E731
        _, log_det = jnp.linalg.slogdet(jax.jacfwd(to_env)(u))
        expected = jax.scipy.stats.norm.logpdf(u, mean, jnp.exp(log_std)).sum() - log_det
        np.testing.assert_allclose(log_prob, expected, rtol=1e-4, atol=1e-4)
    # the scale term: log 2 + log 3 lower than on [-1, 1]
    _, unit = sac.sample_action(actor, obs, key, jnp.ones(2))
    np.testing.assert_allclose(unit - log_prob, np.log(6.0), rtol=1e-4)


def test_temperature_rises_below_the_target_entropy_and_falls_above(sac):
    """The gradient of alpha_loss in log alpha: negative (a descent step raises alpha) when
    the policy's entropy -log pi is below the target, positive when above."""
    grad = jax.grad(sac.alpha_loss)
    target_entropy = -1.0
    assert float(grad(0.0, 2.0, target_entropy)) < 0  # entropy -2 < -1: more exploration
    assert float(grad(0.0, -0.5, target_entropy)) > 0  # entropy 0.5 > -1: less


def test_temperature_is_tuned_or_fixed(sac):
    """With --autotune alpha starts at 1 and moves; without, it stays at --alpha."""
    _, metrics = run_small(sac, SAC, total_timesteps=128)
    assert 0 < float(metrics["alpha"][0, 0]) < 1  # the first update's mean, after steps
    _, metrics = run_small(sac, SAC, total_timesteps=128, autotune=False, alpha=0.3)
    np.testing.assert_allclose(metrics["alpha"], 0.3, rtol=1e-6)
