"""Tests of algos/ppo.py: the contract every algorithm file passes (contract.py), run with
PPO's own flags and sizes, and the tests of what only PPO has."""

import math

import equinox as eqx
import jax
import numpy as np
import pytest

from algo_files import load_algo
from contract import ACTOR_CRITIC_LOSS_TAGS, Algo, ContractTests, leaves, run_small

PPO = Algo(
    name="ppo",
    fast=dict(num_minibatches=2, update_epochs=2),
    help_flags=("--num-minibatches", "--update-epochs", "--clip-coef", "--no-norm-adv",
                "--no-clip-vloss", "--no-anneal-lr", "--gae-lambda"),
    help_text="surrogate clipping epsilon",
    bad_inputs=(
        (["--update-epochs", 0], ["--update-epochs", "positive"]),
        (["--num-minibatches", 3], ["--num-minibatches", "--num-envs", "divisible"]),
    ),
    continuous_file="ppo_continuous.py",
    loss_tags=ACTOR_CRITIC_LOSS_TAGS + ("approx_kl", "clipfrac"),
    # 6000 steps round down to 2 chunks of 5 updates of 4 x 128 steps; the rate falls
    # linearly to 0 over the 10 updates and is constant within one.
    tiny_chunk_steps=2560,
    tiny_learning_rates=(2.5e-4 * 0.6, 2.5e-4 * 0.1),
    chain=dict(num_envs=16, num_steps=8, num_minibatches=1, update_epochs=4,
               total_timesteps=12_800, learning_rate=2.5e-3),
    learn_flags=(),  # the defaults: 500k steps
)


class TestContract(ContractTests):
    algo = PPO


@pytest.fixture(scope="module")
def ppo():
    return load_algo("ppo")


@pytest.mark.parametrize("obs_shape, conv", [((4,), False), ((10, 5), False), ((10, 10, 4), True)])
def test_torso_follows_the_observation_rank(ppo, obs_shape, conv):
    """An MLP on flattened vectors and matrices, the CNN on images (the contract's
    test_image_and_matrix_observations_train trains both)."""
    network = eqx.filter_eval_shape(ppo.ActorCritic, jax.random.key(0), obs_shape, 3)
    assert (network.actor_torso.conv is not None) == conv
    assert (network.critic_torso.conv is not None) == conv
    first_layer = network.actor_torso.conv if conv else network.actor_torso.layers[0]
    assert first_layer.in_features == (9 * obs_shape[-1] if conv else math.prod(obs_shape))


@pytest.fixture(scope="module")
def default_small_run(ppo):
    state, _ = run_small(ppo, PPO, learning_rate=1e-2)
    again, _ = run_small(ppo, PPO, learning_rate=1e-2)  # a fresh compile reproduces it exactly
    assert all(np.array_equal(a, b) for a, b in zip(leaves(state.network), leaves(again.network)))
    return state


@pytest.mark.parametrize("flag", ["norm_adv", "clip_vloss", "anneal_lr"])
def test_each_boolean_flag_changes_training(ppo, flag, default_small_run):
    """Against the default configuration, switching one flag off changes the parameters
    (learning rate 1e-2 so the values move further than the clip range in one update)."""
    state, _ = run_small(ppo, PPO, learning_rate=1e-2, **{flag: False})
    for a, b in zip(leaves(default_small_run.network), leaves(state.network)):
        assert a.shape == b.shape
    assert not all(np.array_equal(a, b)
                   for a, b in zip(leaves(default_small_run.network), leaves(state.network)))
