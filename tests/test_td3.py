"""Tests of algos/td3.py: the contract every algorithm file passes (contract.py), on the
continuous twins of its test environments, with the replay buffer's tests, and the tests of
what only TD3 has: target-policy smoothing and delayed updates."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from algo_files import load_algo
from contract import (ContinuousActionTests, ContractTests, CorrelatedNoiseTests,
                      RandomActionsTests, ReplayBufferTests, continuous_replay_algo,
                      deterministic_actor_head, same_networks, train_chunks)

TD3 = continuous_replay_algo(
    "td3", help_flags=("--policy-noise", "--noise-clip", "--exploration-noise",
                       "--noise-correlation", "--policy-frequency"),
    help_text="critic steps per actor and target-network step",
    bad_inputs=((["--policy-noise", -0.1], ["--policy-noise", "negative"]),
                (["--policy-frequency", 0], ["--policy-frequency", "positive"]),
                (["--noise-correlation", 1.0], ["--noise-correlation", "[0, 1)"])),
    loss_tags=("qf_loss", "qf1_loss", "qf2_loss", "qf1_values", "qf2_values", "actor_loss"),
    head=deterministic_actor_head,
    # targets that follow fast enough for 1000 gradient steps to reach the chain's values
    chain=dict(tau=0.1, policy_frequency=1, exploration_noise=1.0),
    # 10k steps: 2 seeds near -110, one at -352 (the actor, delayed, learns later than DDPG's)
    learn_flags=("--total-timesteps", 15_000, "--batch-size", 64),
    changed_flags=(("policy_noise", 0.5), ("noise_clip", 0.05), ("exploration_noise", 0.5),
                   ("noise_correlation", 0.9), ("policy_frequency", 1), ("tau", 0.5)),
)


class TestContract(ContinuousActionTests, RandomActionsTests, CorrelatedNoiseTests,
                   ReplayBufferTests, ContractTests):
    algo = TD3
    values_tag = "qf1_values"
    # no continuous-action gymnax environment has image observations: not collected here
    test_image_observations_train = None


@pytest.fixture(scope="module")
def td3():
    return load_algo("td3")


def test_smoothing_noise_is_clipped_and_target_actions_stay_in_bounds(td3):
    """a' = clip(mu'(s') + clip(noise, -c, c), -1, 1): with a large noise, every a' lies within
    c of mu'(s') and inside [-1, 1], and the clip is reached."""
    actor = td3.Actor(jax.random.key(0), (3,), 2)
    obs = jnp.array([0.3, -0.2, 0.5])
    mu = np.asarray(actor(obs))
    args = td3.Args(policy_noise=10.0, noise_clip=0.3)
    keys = jax.random.split(jax.random.key(1), 1000)
    actions = np.asarray(jax.vmap(lambda key: td3.smoothed_target_action(actor, obs, key, args))(keys))
    offset = actions - mu
    assert np.abs(offset).max() <= 0.3 + 1e-6
    assert np.isclose(np.abs(offset), 0.3, atol=1e-6).mean() > 0.9  # 10 / 0.3: nearly always clipped
    # an actor at the bounds (weights scaled up: tanh at +-1): a' does not leave [-1, 1]
    saturated = jax.tree.map(lambda x: x * 100, actor)
    actions = np.asarray(jax.vmap(lambda key: td3.smoothed_target_action(saturated, obs * 10, key,
                                                                        args))(keys))
    assert np.abs(actions).max() <= 1.0 and np.isclose(np.abs(actions), 1.0).mean() > 0.3


def test_actor_and_targets_move_every_policy_frequency_critic_steps(td3):
    """8 critic steps per chunk: with --policy-frequency 9 the first chunk leaves the actor and
    both target networks untouched (and logs no actor loss) while the critics learn; the
    second chunk's 9th critic step moves them, once."""
    states, history = train_chunks(td3, TD3, 2, total_timesteps=64, num_chunks=2,
                                   policy_frequency=9, tau=0.5)
    initial, first, second = states
    assert int(first.learner.gradient_steps) == 8 and int(second.learner.gradient_steps) == 16
    assert not same_networks(initial.network.critics, first.network.critics)
    assert same_networks(initial.network.actor, first.network.actor)
    assert same_networks(initial.learner.target_network, first.learner.target_network)
    assert np.isnan(history[0]["actor_loss"]) and np.isfinite(history[0]["qf_loss"])
    assert not same_networks(first.network.actor, second.network.actor)
    assert not same_networks(first.learner.target_network, second.learner.target_network)
    assert np.isfinite(history[1]["actor_loss"])
