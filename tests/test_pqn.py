"""Tests of algos/pqn.py: the contract every algorithm file passes (contract.py), run with
PQN's own flags and sizes, and the tests of what only PQN has: the Q(lambda) targets with
their episode ends, the epsilon schedule, the LayerNorm of the network, and each flag."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from algo_files import load_algo
from contract import Algo, ContractTests, EpsilonScheduleTests, TorsoTests, q_network_head

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
    changed_flags=(("anneal_lr", False), ("q_lambda", 0.0), ("max_grad_norm", 1e-3),
                   ("update_epochs", 3), ("num_minibatches", 4), ("start_e", 0.5),
                   ("end_e", 0.5), ("exploration_fraction", 0.01)),
)


class TestContract(EpsilonScheduleTests, TorsoTests, ContractTests):
    algo = PQN
    network_class = "QNetwork"
    hidden_sizes = {False: [120, 84], True: [128]}
    # about 900 episodes: their returns (1 to 510) vary widely
    epsilon_run = dict(num_envs=8, total_timesteps=4096)


@pytest.fixture(scope="module")
def pqn():
    return load_algo("pqn")


# ---------------------------------------------------------------------------------------------
# The network: LayerNorm before every hidden ReLU.


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
# What the command line logs.


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
