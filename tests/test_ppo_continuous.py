"""Tests of algos/ppo_continuous.py: the contract every algorithm file passes (contract.py), on
the continuous twins of its test environments, and the tests of what only continuous PPO has:
the action mapping, the Gaussian log-probability, the running statistics."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from algo_files import load_algo
from conftest import the_run
from contract import ContinuousActionTests, ContractTests, gaussian_actor_critic_head, run_small
from test_ppo import PPO

# ppo.py's flags, bad inputs and logged losses, and the file's own
PPO_CONTINUOUS = dataclasses.replace(
    PPO,
    name="ppo_continuous",
    help_flags=PPO.help_flags + ("--no-norm-obs", "--no-norm-reward"),
    # With cli_flags' 64 steps: 6000 steps round down to 2 chunks of 5 updates of 8 x 64 steps;
    # the rate falls linearly to 0 over the 10 updates and is constant within one.
    tiny_chunk_steps=2560,
    tiny_learning_rates=(3e-4 * 0.6, 3e-4 * 0.1),
    # the chain's values are checked in its own units: no normalisation
    chain={**PPO.chain, "norm_obs": False, "norm_reward": False},
    # 200k steps: --seed 0 and --seed 2 (3 seeds each) scored -155.8 and -127.4 on average,
    # where the barely trained agents of 20k steps score about -1200
    learn_env="Pendulum-v1",
    learn_threshold=-250,
    learn_flags=("--total-timesteps", 200_000),
    # the contract's short runs (1024 steps in one chunk) need rollouts shorter than 8 x 256
    cli_flags=("--num-steps", 64),
    head=gaussian_actor_critic_head,
    changed_flags=PPO.changed_flags + (("norm_obs", False), ("norm_reward", False)),
    continuous=True,
    frozen_flags=("--no-norm-obs",),
    normalizes_obs=True,
)


class TestContract(ContinuousActionTests, ContractTests):
    algo = PPO_CONTINUOUS
    # no continuous-action gymnax environment has image observations: not collected here
    test_image_observations_train = None


@pytest.fixture(scope="module")
def ppo_continuous():
    return load_algo("ppo_continuous")


def test_log_prob_and_entropy_of_the_diagonal_gaussian(ppo_continuous):
    """Against the normal density of each dimension, summed."""
    key_0, key_1, key_2 = jax.random.split(jax.random.key(0), 3)
    action = jax.random.normal(key_0, (3,)) * 2
    mean = jax.random.normal(key_1, (3,))
    log_std = jax.random.normal(key_2, (3,)) * 0.5
    expected = jax.scipy.stats.norm.logpdf(action, mean, jnp.exp(log_std)).sum()
    np.testing.assert_allclose(ppo_continuous.gaussian_log_prob(action, mean, log_std), expected,
                               rtol=1e-5)
    # the entropy of N(mean, std^2) per dimension: log(std) + log(2 pi e) / 2
    np.testing.assert_allclose(ppo_continuous.gaussian_entropy(log_std),
                               np.sum(np.asarray(log_std) + 0.5 * np.log(2 * np.pi * np.e)),
                               rtol=1e-5)


def test_running_statistics_are_those_of_everything_seen(ppo_continuous):
    """Batches of different sizes, added one by one: the mean and variance of their union
    (up to the initial count of 1e-4)."""
    rng = np.random.default_rng(0)
    batches = [rng.normal(3.0, 2.0, (size, 2)).astype(np.float32) for size in (5, 17, 1, 40)]
    rms = ppo_continuous.rms_init((2,))
    for batch in batches:
        rms = ppo_continuous.rms_update(rms, jnp.asarray(batch))
    union = np.concatenate(batches)
    np.testing.assert_allclose(rms.mean, union.mean(axis=0), rtol=1e-4)
    np.testing.assert_allclose(rms.var, union.var(axis=0), rtol=1e-4)
    np.testing.assert_allclose(rms.count, len(union), rtol=1e-5)
    normalised = ppo_continuous.normalize_obs(rms, jnp.asarray(union))
    np.testing.assert_allclose(normalised.mean(axis=0), 0.0, atol=1e-4)
    assert float(ppo_continuous.normalize_obs(rms, jnp.full(2, 1e6)).max()) == 10.0  # clipped


def test_observation_statistics_are_saved_and_restored(ppo_continuous, tmp_path):
    """The model file holds each seed's statistics as training left them, and --eval-only
    uses them: the same seeds evaluated with fresh statistics score differently."""
    from contract import as_flags, run_main

    result = run_main(ppo_continuous, *as_flags(dict(total_timesteps=2048, num_steps=64,
                                                     num_chunks=2, num_seeds=2, save_model=True,
                                                     num_minibatches=2, update_epochs=2,
                                                     track=False, log_dir=tmp_path)))
    assert result.returncode == 0, result.stderr
    run = the_run(tmp_path)
    _, agents = ppo_continuous.load_agents(run.model)
    # every observation the policy acted on: 8 environments x 64 steps x 4 updates, per seed
    np.testing.assert_allclose(agents.obs_rms.count, [2048 + 1e-4] * 2, rtol=1e-6)
    assert (np.abs(np.asarray(agents.obs_rms.mean)) > 1e-3).any()
    assert not np.allclose(agents.obs_rms.mean[0], agents.obs_rms.mean[1])  # per seed

    env, env_params = ppo_continuous.make_env(ppo_continuous.Args())
    _, eval_keys, _ = ppo_continuous.seed_keys(0, 2, 10)
    evaluate = jax.vmap(jax.vmap(lambda agent, key: ppo_continuous.evaluate(agent, key, env,
                                                                            env_params),
                                 in_axes=(None, 0)))
    saved = np.asarray(evaluate(agents, eval_keys)).mean(axis=1)
    np.testing.assert_allclose(saved, run.summary["eval_returns"], rtol=1e-5)
    fresh = agents._replace(obs_rms=jax.vmap(lambda _: ppo_continuous.rms_init((3,)))(jnp.arange(2)))
    assert not np.allclose(np.asarray(evaluate(fresh, eval_keys)).mean(axis=1), saved)


def test_no_normalisation_keeps_the_initial_statistics(ppo_continuous):
    state, _ = run_small(ppo_continuous, PPO_CONTINUOUS, norm_obs=False, norm_reward=False)
    np.testing.assert_array_equal(state.obs_rms.mean, 0.0)
    np.testing.assert_array_equal(state.obs_rms.var, 1.0)
    state, _ = run_small(ppo_continuous, PPO_CONTINUOUS)
    # SMALL: 2 environments x 16 steps x 2 updates
    np.testing.assert_allclose(state.obs_rms.count, 64 + 1e-4, rtol=1e-6)
    np.testing.assert_allclose(state.reward_scaler.rms.count, 64 + 1e-4, rtol=1e-6)
