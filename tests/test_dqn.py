"""Tests of algos/dqn.py: the contract every algorithm file passes (contract.py), run with
DQN's own flags and sizes, and the tests of what only the replay-buffer family has: the
buffer, --learning-starts, the epsilon schedule, the target network, the loss."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from algo_files import load_algo
from contract import (ContractTests, EpsilonScheduleTests, ReplayBufferTests, TorsoTests, leaves,
                      q_network_head, replay_algo, same_networks, train_chunks)

DQN = replay_algo(
    "dqn", help_flags=("--huber-delta",),
    help_text="environment steps before the first gradient step",
    bad_inputs=((["--huber-delta", 0], ["--huber-delta"]),),
    loss_tags=("td_loss", "q_values"),
    head=q_network_head,
)


class TestContract(ReplayBufferTests, EpsilonScheduleTests, TorsoTests, ContractTests):
    algo = DQN
    network_class = "QNetwork"
    hidden_sizes = {False: [120, 84], True: [128]}


@pytest.fixture(scope="module")
def dqn():
    return load_algo("dqn")


# ---------------------------------------------------------------------------------------------
# The target network.


@pytest.mark.parametrize("tau", [1.0, 0.5])
def test_target_network_follows_every_target_period(dqn, tau):
    """Each chunk of one update takes 8 gradient steps (32 steps / train_frequency 4); with
    target_network_frequency 32 the target moves every 8 gradient steps, i.e. at the last step
    of each chunk: to the online network (tau 1), or halfway to it (tau 0.5)."""
    states, _ = train_chunks(dqn, DQN, 3, total_timesteps=32, target_network_frequency=32, tau=tau)
    assert same_networks(states[0].network, states[0].learner.target_network)
    for state in states[1:]:
        assert int(state.learner.gradient_steps) % 8 == 0
    # tau 1: after each chunk the target is the online network
    # tau 0.5: target_k = (online_k + target_{k-1}) / 2, with online_k of the step that updated
    for before, after in zip(states[:-1], states[1:]):
        online = leaves(after.network)
        previous = leaves(before.learner.target_network)
        expected = [tau * o + (1 - tau) * p for o, p in zip(online, previous)]
        for e, t in zip(expected, leaves(after.learner.target_network)):
            np.testing.assert_allclose(t, e, rtol=1e-6, atol=1e-7)
        assert not same_networks(before.learner.target_network, after.learner.target_network)


# ---------------------------------------------------------------------------------------------
# The loss.


@pytest.mark.parametrize("double_q", [False, True])
def test_loss_is_the_td_error_of_q_learning(dqn, double_q):
    """One transition by hand: target r + gamma (1 - terminated) Q'(s', a*), where a* is the
    argmax of Q' (DQN) or of the online Q (double DQN); squared error / 2, or Huber."""
    obs, next_obs = jnp.array([0.1, -0.2, 0.3, 0.05]), jnp.array([0.2, 0.1, -0.3, 0.5])
    for seed in range(20):  # two networks whose argmax at next_obs differ: the variants differ
        key_0, key_1 = jax.random.split(jax.random.key(seed))
        network = dqn.QNetwork(key_0, (4,), 3)
        target_network = dqn.QNetwork(key_1, (4,), 3)
        q, q_next, q_next_online = network(obs), target_network(next_obs), network(next_obs)
        if int(q_next.argmax()) != int(q_next_online.argmax()):
            break
    assert int(q_next.argmax()) != int(q_next_online.argmax())
    a_star = int((q_next_online if double_q else q_next).argmax())
    for terminated in (0.0, 1.0):
        transition = dqn.Transition(obs, jnp.int32(2), jnp.float32(1.5), jnp.float32(terminated),
                                    next_obs)
        target = 1.5 + 0.9 * (1 - terminated) * float(q_next[a_star])
        td = target - float(q[2])
        for huber_delta, expected in [(None, 0.5 * td ** 2),
                                      (0.01, 0.01 * (abs(td) - 0.005))]:
            args = dqn.Args(gamma=0.9, double_q=double_q, huber_delta=huber_delta)
            loss, metrics = dqn.q_loss(network, target_network, transition, args)
            assert float(loss) == pytest.approx(expected, rel=1e-5)
            assert float(metrics["q_values"]) == pytest.approx(float(q[2]))
