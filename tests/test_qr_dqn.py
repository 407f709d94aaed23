"""Tests of algos/qr_dqn.py: the contract every algorithm file passes (contract.py), run with
QR-DQN's own flags and sizes, and the tests of what only QR-DQN has: the quantile head, the
greedy action by the mean quantile, the quantile Huber loss (by hand in numpy), --double-q and
--huber-param; and the replay buffer, which it has as dqn.py has."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from algo_files import load_algo
from conftest import RANDOM_LENGTH
from contract import (ContractTests, ReplayBufferTests, replay_algo, same_networks, small_args,
                      train_chunks)


def quantile_head(network, obs):
    """Q(obs, .) [A], the mean of each action's quantiles, and the greedy value max_a Q."""
    q = network(obs).mean(axis=-1)
    return q, q.max()


QR_DQN = replay_algo(
    "qr_dqn", help_flags=("--n-quantiles", "--huber-param"),
    help_text="quantiles of the return estimated per action",
    bad_inputs=(
        (["--n-quantiles", 0], ["--n-quantiles", "at least 1"]),
        (["--huber-param", -0.5], ["--huber-param", ">= 0"]),
    ),
    loss_tags=("loss", "q_values"),
    head=quantile_head,
    # 300k steps (the defaults' epsilon schedule scales with them): 500.0 for all 3 seeds of
    # --seed 0 and of --seed 1 (2026-12-04); the 500k of the defaults took twice as long
    learn_flags=("--total-timesteps", 300_000),
)


class TestContract(ReplayBufferTests, ContractTests):
    algo = QR_DQN


@pytest.fixture(scope="module")
def qr():
    return load_algo("qr_dqn")


# ---------------------------------------------------------------------------------------------
# The network: quantiles per action, and the greedy action by their mean.


def test_network_outputs_n_quantiles_per_action_at_the_midpoints(qr):
    network = qr.QNetwork(jax.random.key(0), (4,), 3, 7)
    assert network(jnp.ones(4)).shape == (3, 7)
    np.testing.assert_allclose(qr.quantile_midpoints(4), [1 / 8, 3 / 8, 5 / 8, 7 / 8], rtol=1e-6)
    assert qr.quantile_midpoints(4).dtype == jnp.float32


def constant_network(qr, quantiles):
    """A network whose output is `quantiles` [A, N] whatever the (2-dimensional) observation."""
    quantiles = jnp.asarray(quantiles, jnp.float32)
    network = qr.QNetwork(jax.random.key(0), (2,), *quantiles.shape)
    return eqx.tree_at(lambda n: (n.head.weight, n.head.bias), network,
                       (jnp.zeros_like(network.head.weight), quantiles.ravel()))


# Action 0 has the larger median and the larger top quantile, action 1 the larger mean.
MEAN_PICKS_1 = [[-5.0, 1.0, 1.0, 2.0], [0.0, 0.0, 0.0, 0.0]]


def test_greedy_action_is_the_argmax_of_the_mean_quantile(qr):
    """RandomLengthEpisodes pays 1 + a for one-step episodes: the greedy episodes of evaluation
    and the epsilon-0 episodes of training both take action 1, the larger mean."""
    network = constant_network(qr, MEAN_PICKS_1)
    assert jnp.argmax(network(jnp.ones(2))[:, 2]) == 0  # the median picks action 0
    env, env_params = qr.make_env(qr.Args(env=RANDOM_LENGTH))
    returns = jax.jit(jax.vmap(lambda key: qr.evaluate(
        network, key, env, env_params.replace(max_length=1))))(
            jax.random.split(jax.random.key(1), 16))
    np.testing.assert_array_equal(returns, np.full(16, 2.0))

    # Training's rollout, greedy (epsilon 0), with episodes of 1 to 8 steps: every return is
    # 2 (2^L - 1), which no episode with an action 0 in it returns.
    args = small_args(qr, QR_DQN, env=RANDOM_LENGTH, start_e=0.0, end_e=0.0, n_quantiles=4,
                      learning_starts=63, total_timesteps=64, learning_rate=1e-30)
    init, train_chunk, _ = qr.make_train(args)
    state = jax.jit(init)(jax.random.key(0))
    state = state._replace(learner=state.learner._replace(network=network))
    _, metrics = jax.jit(train_chunk)(state)
    count = int(metrics["episode_count"])
    assert count >= 4
    lengths, total = float(metrics["episode_length_sum"]), float(metrics["episode_return_sum"])
    assert total % 2 == 0 and total >= 2 * lengths  # all-1 episodes of total length `lengths`


# ---------------------------------------------------------------------------------------------
# The loss, by hand.


def quantile_huber_loss(theta, target, kappa: float) -> float:
    """theta [N] at the midpoints (2i + 1) / 2N, target samples [M]: the sum over i of the mean
    over j of |tau_i - 1{u_ij < 0}| L(u_ij), u_ij = target_j - theta_i, L the Huber loss of
    threshold kappa (not divided by kappa), or |u| for kappa 0."""
    theta, target = np.asarray(theta, np.float64), np.asarray(target, np.float64)
    n = len(theta)
    tau = (2 * np.arange(n) + 1) / (2 * n)
    total = 0.0
    for i in range(n):
        for j in range(len(target)):
            u = target[j] - theta[i]
            if kappa == 0:
                huber = abs(u)
            elif abs(u) <= kappa:
                huber = 0.5 * u * u
            else:
                huber = kappa * (abs(u) - 0.5 * kappa)
            total += abs(tau[i] - (1.0 if u < 0 else 0.0)) * huber / len(target)
    return total


@pytest.mark.parametrize("double_q", [False, True])
def test_loss_is_the_quantile_huber_loss_of_the_target_distribution(qr, double_q):
    """One transition by hand: target samples r + gamma (1 - terminated) theta'_j(s', a*),
    where a* is the argmax of the mean of the target network's quantiles (QR-DQN) or of the
    online network's (double Q); the quantile Huber loss of theta(s, a) against them."""
    obs, next_obs = jnp.array([0.1, -0.2, 0.3, 0.05]), jnp.array([0.2, 0.1, -0.3, 0.5])
    for seed in range(20):  # two networks whose greedy actions at next_obs differ
        key_0, key_1 = jax.random.split(jax.random.key(seed))
        network = qr.QNetwork(key_0, (4,), 3, 5)
        target_network = qr.QNetwork(key_1, (4,), 3, 5)
        theta, theta_next = np.asarray(network(obs)), np.asarray(target_network(next_obs))
        theta_next_online = np.asarray(network(next_obs))
        if theta_next.mean(1).argmax() != theta_next_online.mean(1).argmax():
            break
    assert theta_next.mean(1).argmax() != theta_next_online.mean(1).argmax()
    a_star = int((theta_next_online if double_q else theta_next).mean(1).argmax())
    for terminated in (0.0, 1.0):
        transition = qr.Transition(obs, jnp.int32(2), jnp.float32(1.5), jnp.float32(terminated),
                                   next_obs)
        target = 1.5 + 0.9 * (1 - terminated) * theta_next[a_star]  # [5]
        for kappa in (1.0, 0.2, 0.0):
            expected = quantile_huber_loss(theta[2], target, kappa)
            args = qr.Args(gamma=0.9, double_q=double_q, n_quantiles=5, huber_param=kappa)
            loss, metrics = qr.q_loss(network, target_network, transition, args)
            assert float(loss) == pytest.approx(expected, rel=1e-5)
            assert float(metrics["loss"]) == float(loss)
            assert float(metrics["q_values"]) == pytest.approx(theta[2].mean(), rel=1e-5)


def test_loss_drives_each_output_to_its_quantile(qr):
    """Gradient descent on the loss of one transition whose target samples are 0, 0, 0, 10
    (gamma 1, reward 0, the target network's 4 quantiles of a*): with huber_param 0 the
    minimiser of the loss of theta_i is the tau_i-quantile of the samples, 0 for tau = 1/8,
    3/8, 5/8 and 10 for 7/8; the mean, 2.5, is the return's."""
    import optax

    target_network = constant_network(qr, [[0.0, 0.0, 0.0, 10.0], [-1.0, -1.0, -1.0, -1.0]])
    network = constant_network(qr, jnp.zeros((2, 4)))
    transition = qr.Transition(jnp.ones(2), jnp.int32(1), jnp.float32(0), jnp.float32(0),
                               jnp.ones(2))
    args = qr.Args(gamma=1.0, n_quantiles=4, huber_param=0.0)
    # a step size falling to 0, so the subgradient steps of the absolute loss settle
    optimizer = optax.sgd(optax.linear_schedule(0.02, 0.0, 3000))

    def step(carry, _):
        network, opt_state = carry
        grads = jax.grad(lambda n: qr.q_loss(n, target_network, transition, args)[0])(network)
        updates, opt_state = optimizer.update(grads, opt_state)
        return (optax.apply_updates(network, updates), opt_state), None

    (network, _), _ = jax.jit(lambda n: jax.lax.scan(step, (n, optimizer.init(n)), length=3000))(
        network)
    np.testing.assert_allclose(network(jnp.ones(2))[1], [0.0, 0.0, 0.0, 10.0], atol=0.2)


# ---------------------------------------------------------------------------------------------
# Flags that change training.


def test_huber_param_changes_training(qr):
    """CartPole's targets differ from the untrained quantiles by about 1: thresholds of 1,
    0.1 and 0 (the absolute error) weigh them differently."""
    networks = [train_chunks(qr, QR_DQN, 1, huber_param=kappa)[0][1].network
                for kappa in (1.0, 0.1, 0.0)]
    assert not same_networks(networks[0], networks[1])
    assert not same_networks(networks[1], networks[2])
    assert not same_networks(networks[0], networks[2])


def test_n_quantiles_sets_the_head(qr):
    states, history = train_chunks(qr, QR_DQN, 1, n_quantiles=3)
    assert states[1].network(jnp.zeros(4)).shape == (2, 3)
    assert np.isfinite(history[0]["loss"])
