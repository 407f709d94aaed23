"""Tests of algos/pqn.py: the contract every algorithm file passes (contract.py), run with
PQN's own flags and sizes, and the tests of what only PQN has: the Q(lambda) targets with
their episode ends, the epsilon schedule, the LayerNorm of the network, and each flag."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from algo_files import load_algo
from contract import Algo, ContractTests, leaves, q_network_head, run_small, train_chunks

PQN = Algo(
    name="pqn",
    fast=dict(num_minibatches=2, update_epochs=2),
    help_flags=("--q-lambda", "--update-epochs", "--num-minibatches", "--start-e", "--end-e",
                "--exploration-fraction", "--max-grad-norm", "--no-anneal-lr"),
    help_text="epsilon at the end of exploration and after",
    bad_inputs=(
        (["--update-epochs", 0], ["--update-epochs", "positive"]),
        (["--num-minibatches", 3], ["--num-minibatches", "--num-envs", "divisible"]),
        (["--q-lambda", 1.5], ["--q-lambda", "[0, 1]"]),
        (["--q-lambda", -0.1], ["--q-lambda", "[0, 1]"]),
        (["--start-e", 1.5], ["--start-e", "[0, 1]"]),
        (["--end-e", -0.1], ["--end-e", "[0, 1]"]),
        (["--exploration-fraction", 0], ["--exploration-fraction", "(0, 1]"]),
        (["--exploration-fraction", 1.5], ["--exploration-fraction", "(0, 1]"]),
        (["--max-grad-norm", 0], ["--max-grad-norm", "positive"]),
    ),
    continuous_file="sac.py",
    loss_tags=("td_loss", "q_values"),
    # With cli_flags' 16 steps: 6000 steps round down to 2 chunks of 5 updates of 32 x 16 steps;
    # the rate falls linearly to 0 over the 10 updates and is constant within one.
    tiny_chunk_steps=2560,
    tiny_learning_rates=(2.5e-4 * 0.6, 2.5e-4 * 0.1),
    # every chain step hits the time limit, so the targets are one-step ones: 200 updates of
    # them (each a Bellman iteration) bring V(good) within 0.1 of 10; actions at random
    chain=dict(num_envs=16, num_steps=4, num_minibatches=1, update_epochs=4,
               total_timesteps=12_800, learning_rate=5e-3, start_e=1.0, end_e=1.0),
    learn_flags=(),  # the defaults: 500k steps
    # the contract's short runs (1024 steps in one chunk) need rollouts shorter than 32 x 64
    cli_flags=("--num-steps", 16),
    head=q_network_head,
    policy_starts_uniform=False,
)


class TestContract(ContractTests):
    algo = PQN


@pytest.fixture(scope="module")
def pqn():
    return load_algo("pqn")


# ---------------------------------------------------------------------------------------------
# The network: LayerNorm before every hidden ReLU.


@pytest.mark.parametrize("obs_shape, conv", [((4,), False), ((10, 5), False), ((10, 10, 4), True)])
def test_torso_follows_the_observation_rank(pqn, obs_shape, conv):
    """An MLP on flattened vectors and matrices, the CNN on images (the contract's
    test_image_observations_train and Catch-bsuite runs train them)."""
    network = eqx.filter_eval_shape(pqn.QNetwork, jax.random.key(0), obs_shape, 3)
    assert (network.torso.conv is not None) == conv
    first_layer = network.torso.conv if conv else network.torso.layers[0]
    assert first_layer.in_features == (9 * obs_shape[-1] if conv else math.prod(obs_shape))
    assert [layer.out_features for layer in network.torso.layers] == ([128] if conv else [120, 84])


def hidden_preactivations(torso, obs):
    """The input of each hidden ReLU, recomputed from the torso's own layers."""
    x, out = obs.ravel(), []
    for layer, norm in zip(torso.layers, torso.norms):
        x = norm(layer(x))
        out.append(x)
        x = jax.nn.relu(x)
    return out


def test_hidden_layers_are_layer_normalised(pqn):
    """Whatever the scale of the input, each hidden layer's pre-activations have mean 0 and
    variance 1 over its units (the learned scale and shift start at 1 and 0), and the torso's
    output does not grow with the input. (Inputs much smaller than 1 give a first layer whose
    variance is near LayerNorm's eps of 1e-5, which shrinks the normalised variance.)"""
    network = pqn.QNetwork(jax.random.key(0), (4,), 2)
    assert all(isinstance(norm, eqx.nn.LayerNorm) for norm in network.torso.norms)
    obs = jax.random.normal(jax.random.key(1), (4,))
    for scale in (10.0, 1e3):
        for x in hidden_preactivations(network.torso, scale * obs):
            assert float(x.mean()) == pytest.approx(0.0, abs=1e-4)
            assert float(x.var()) == pytest.approx(1.0, rel=1e-2)
    # the features reaching the head are invariant to the input's scale (up to LayerNorm's eps)
    np.testing.assert_allclose(network.torso(10 * obs), network.torso(1e3 * obs), rtol=1e-3,
                               atol=1e-4)
    # the conv's channels too, pixel by pixel
    image = pqn.QNetwork(jax.random.key(0), (10, 10, 4), 3)
    patch = jax.random.normal(jax.random.key(2), (36,))
    channels = image.torso.conv_norm(image.torso.conv(100 * patch))
    assert float(channels.mean()) == pytest.approx(0.0, abs=1e-4)
    assert float(channels.var()) == pytest.approx(1.0, rel=1e-2)
    q = image(jnp.zeros((10, 10, 4)))
    assert q.shape == (3,) and np.isfinite(q).all()


# ---------------------------------------------------------------------------------------------
# Q(lambda) targets of one trajectory, by hand.

# A trajectory of T = 7 steps of one environment: step 1 terminates, step 3 hits the time
# limit, step 4 terminates at the time limit (terminated and truncated both), steps 5 and 6
# continue; the rollout ends after step 6 with the episode running.
TERMINATED = np.array([0, 1, 0, 0, 1, 0, 0], bool)
TRUNCATED = np.array([0, 0, 0, 1, 1, 0, 0], bool)
REWARDS = np.array([1.0, -2.0, 0.5, 3.0, 1.5, -1.0, 2.0], np.float32)


def by_hand_targets(v, gamma, lam):
    """G_t written out step by step for the trajectory above; v[t] = max_a Q(final_obs_t)."""
    r = REWARDS

    def mix(t, g_next):  # continue the episode: bootstrap partly from v_t, partly from G_t+1
        return r[t] + gamma * ((1 - lam) * v[t] + lam * g_next)

    g = np.zeros(7)
    g[6] = r[6] + gamma * v[6]  # the rollout's end: bootstrap from the state reached
    g[5] = mix(5, g[6])
    g[4] = r[4]  # terminated (at the time limit too): nothing after it counts
    g[3] = r[3] + gamma * v[3]  # time limit: bootstrap from the final observation, trace cut
    g[2] = mix(2, g[3])
    g[1] = r[1]  # terminated
    g[0] = mix(0, g[1])
    return g


@pytest.mark.parametrize("lam", [0.65, 0.0, 1.0])
def test_q_lambda_targets_of_one_trajectory(pqn, lam):
    gamma = 0.9
    network = pqn.QNetwork(jax.random.key(0), (4,), 3)
    keys = jax.random.split(jax.random.key(1), 2)
    obs = jax.random.normal(keys[0], (7, 4))
    final_obs = jax.random.normal(keys[1], (7, 4))
    traj = pqn.Transition(obs, jnp.array([0, 1, 2, 0, 1, 2, 0], jnp.int32), jnp.asarray(REWARDS),
                          jnp.asarray(TERMINATED), jnp.asarray(TRUNCATED), final_obs)
    args = pqn.Args(gamma=gamma, q_lambda=lam)
    sample = jax.jit(pqn.compute_targets, static_argnums=2)(network, traj, args)

    v = np.asarray(jax.vmap(network)(final_obs)).max(axis=-1)
    assert np.abs(v).min() > 0.05  # a missing or extra bootstrap shows in the targets
    np.testing.assert_allclose(sample.target, by_hand_targets(v, gamma, lam), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(sample.obs, obs)
    np.testing.assert_array_equal(sample.action, traj.action)


def test_loss_is_half_the_squared_error_of_the_action_taken(pqn):
    network = pqn.QNetwork(jax.random.key(0), (4,), 3)
    obs = jnp.array([0.1, -0.2, 0.3, 0.05])
    q = np.asarray(network(obs))
    loss, metrics = pqn.q_loss(network, pqn.Sample(obs, jnp.int32(2), jnp.float32(1.5)))
    assert float(loss) == pytest.approx(0.5 * (1.5 - q[2]) ** 2, rel=1e-5)
    assert float(metrics["td_loss"]) == pytest.approx(float(loss))
    assert float(metrics["q_values"]) == pytest.approx(q[2])


# ---------------------------------------------------------------------------------------------
# Epsilon.


def test_epsilon_falls_linearly_then_stays(pqn):
    """start_e 1 to end_e 0.1 over half of 320 steps; chunks of 32 steps report the epsilon of
    their last step."""
    _, history = train_chunks(pqn, PQN, 10, total_timesteps=320, num_chunks=10, start_e=1.0,
                              end_e=0.1, exploration_fraction=0.5)
    last_steps = 32 * np.arange(1, 11) - 2  # 2 environments: the last step starts at 30, 62, ...
    expected = np.maximum(1.0 - 0.9 * last_steps / 160, 0.1)
    np.testing.assert_allclose([h["epsilon"] for h in history], expected, rtol=1e-6)


def test_epsilon_one_acts_at_random_and_zero_greedily(pqn):
    """RandomLengthEpisodes pays (1 + a) 2^(t-1) at step t: with epsilon 0 an untrained network
    takes its one greedy action at every step (returns (1 + a)(2^L - 1)); with epsilon 1 the
    actions are mixed."""
    from conftest import RANDOM_LENGTH, greedy_returns

    results = {}
    for epsilon in (0.0, 1.0):
        # about 900 episodes: their returns (1 to 510) vary widely
        _, history = train_chunks(pqn, PQN, 1, env=RANDOM_LENGTH, learning_rate=1e-30,
                                  num_envs=8, total_timesteps=4096, start_e=epsilon, end_e=epsilon)
        results[epsilon] = history[0]["episode_return_sum"] / history[0]["episode_count"]
    network = train_chunks(pqn, PQN, 0, env=RANDOM_LENGTH)[0][0].network
    greedy = int(np.argmax(network(jnp.ones(2))))
    mean_greedy_return = np.mean(list(greedy_returns(greedy, max_length=8)))  # L uniform on 1..8
    assert results[0.0] == pytest.approx(mean_greedy_return, rel=0.25)
    # at random each step pays 1.5 2^(t-1) on average, between the two greedy policies
    assert results[1.0] == pytest.approx(1.5 * np.mean([2 ** L - 1 for L in range(1, 9)]), rel=0.25)
    assert results[1.0] != pytest.approx(results[0.0], rel=0.1)


def test_learning_rate_and_epsilon_are_logged(pqn, tmp_path):
    """charts/epsilon and charts/learning_rate after each chunk, from a real run."""
    from conftest import run_algo, the_run, describe

    result = run_algo("pqn", "--num-envs", 4, "--num-steps", 16, "--num-minibatches", 2,
                      "--total-timesteps", 640, "--num-chunks", 2, "--exploration-fraction", 0.5,
                      "--end-e", 0.2, "--log-dir", tmp_path)
    assert result.returncode == 0, describe(result)
    events = the_run(tmp_path).events(0)
    # 5 updates of 64 steps per chunk; epsilon of each chunk's last step (4 envs: 316, 636)
    expected = {320: 1.0 - 0.8 * 316 / 320, 640: 0.2}
    assert events["charts/epsilon"] == {k: pytest.approx(v) for k, v in expected.items()}
    assert events["charts/learning_rate"] == {320: pytest.approx(2.5e-4 * 0.6),
                                              640: pytest.approx(2.5e-4 * 0.1)}


# ---------------------------------------------------------------------------------------------
# Each flag changes training.


@pytest.fixture(scope="module")
def default_small_run(pqn):
    state, _ = run_small(pqn, PQN)
    again, _ = run_small(pqn, PQN)  # a fresh compile reproduces it exactly
    assert all(np.array_equal(a, b) for a, b in zip(leaves(state.network), leaves(again.network)))
    return state


@pytest.mark.parametrize("field, value", [("anneal_lr", False), ("q_lambda", 0.0),
                                          ("max_grad_norm", 1e-3), ("update_epochs", 3),
                                          ("num_minibatches", 4), ("start_e", 0.5),
                                          ("end_e", 0.5), ("exploration_fraction", 0.01)])
def test_each_flag_changes_training(pqn, default_small_run, field, value):
    """Against the default configuration, changing one flag changes the parameters."""
    state, _ = run_small(pqn, PQN, **{field: value})
    for a, b in zip(leaves(default_small_run.network), leaves(state.network)):
        assert a.shape == b.shape
    assert not all(np.array_equal(a, b)
                   for a, b in zip(leaves(default_small_run.network), leaves(state.network)))

