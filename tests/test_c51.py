"""Tests of algos/c51.py: the contract every algorithm file passes (contract.py), run with
C51's own flags and sizes, and the tests of what only C51 has: the support and its flags, the
categorical loss (the projection of the target distribution onto the atoms, by hand), the
greedy action of the expected values, double Q-learning; and the replay buffer it shares with
dqn.py, tested here for this file."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from algo_files import load_algo
from contract import ContractTests, ReplayBufferTests, replay_algo, small_args


def expected_q_head(network, obs):
    """C51's expected action values sum_i p_i z_i [A] (the file's own q_values), and their
    max: what acting maximises, the value of the state."""
    q = network.q_values(obs)
    return q, q.max()


C51 = replay_algo(
    "c51", help_flags=("--n-atoms", "--v-min", "--v-max"),
    help_text="smallest atom: returns below it are counted as it",
    bad_inputs=(
        (["--n-atoms", 1], ["--n-atoms", "at least 2"]),
        (["--v-min", 10, "--v-max", 10], ["--v-min", "--v-max"]),
        (["--v-min", 5, "--v-max", -5], ["--v-min", "--v-max"]),
    ),
    loss_tags=("loss", "q_values"),
    head=expected_q_head,
    # The chain's values lie in [0, 10] (gamma 0.9): a support of atoms 0.5 apart around it.
    chain=dict(n_atoms=29, v_min=-2.0, v_max=12.0),
    # 500k steps as the defaults, on 21 atoms: a gradient step 1.8x cheaper than with the
    # default 51 (rlax's projection grows with the square of --n-atoms); CartPole's returns are
    # never negative.
    learn_flags=("--n-atoms", 21, "--v-min", 0, "--v-max", 100),
)


class TestContract(ReplayBufferTests, ContractTests):
    algo = C51
    first_loss_below = 2 * np.log(51)  # cross-entropy on 51 atoms, near log 51 at first


@pytest.fixture(scope="module")
def c51():
    return load_algo("c51")


# ---------------------------------------------------------------------------------------------
# The network: logits per action and atom, the greedy action of the expected values.


def test_network_outputs_logits_per_action_and_atom_and_holds_arrays_only(c51):
    network = c51.QNetwork(jax.random.key(0), (4,), 3, 7, -3.0, 3.0)
    logits = network(jnp.ones(4))
    assert logits.shape == (3, 7)
    np.testing.assert_allclose(network.atoms, [-3, -2, -1, 0, 1, 2, 3], atol=1e-6)
    # every leaf is an array that training may change: the atoms are no leaf
    assert all(isinstance(leaf, jax.Array) for leaf in jax.tree.leaves(network))
    assert all(leaf.size != 7 for leaf in jax.tree.leaves(network))
    probs = np.exp(np.asarray(logits, np.float64))
    probs /= probs.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(network.q_values(jnp.ones(4)), probs @ np.arange(-3, 4),
                               rtol=1e-5, atol=1e-6)


def network_with_logits(c51, logits, atoms):
    """A network for the test environments (observations [2]) whose output is `logits` [A, K]
    for every observation: zero weights, the logits as the head's bias."""
    network = c51.QNetwork(jax.random.key(0), (2,), logits.shape[0], logits.shape[1],
                           float(atoms[0]), float(atoms[-1]))
    return eqx.tree_at(lambda n: (n.head.weight, n.head.bias), network,
                       (jnp.zeros_like(network.head.weight), logits.ravel()))


def test_acting_and_evaluation_maximise_the_expected_value_not_the_likeliest_atom(c51):
    """Action 0 puts the most mass on one atom, the highest, but has the lower mean (4 against
    6). Evaluation (on one-step RandomLengthEpisodes an episode returns 1 + the action taken)
    and epsilon-0 rollouts (the actions in the buffer) take action 1."""
    from conftest import RANDOM_LENGTH
    from contract import evaluate_all

    atoms = jnp.array([-10.0, 0.0, 10.0])
    logits = jnp.log(jnp.array([[0.3, 1e-9, 0.7], [1e-9, 0.4, 0.6]]))
    np.testing.assert_allclose(c51.expected_values(logits, atoms), [4.0, 6.0], atol=1e-4)
    network = network_with_logits(c51, logits, atoms)
    np.testing.assert_allclose(network.q_values(jnp.ones(2)), [4.0, 6.0], atol=1e-4)

    keys = jax.random.split(jax.random.key(1), (1, 16))
    returns = evaluate_all(c51, jax.tree.map(lambda x: x[None], network), RANDOM_LENGTH, keys,
                           max_length=1)
    np.testing.assert_array_equal(returns, np.full((1, 16), 2.0))

    args = small_args(c51, C51, env=RANDOM_LENGTH, n_atoms=3, v_min=-10.0, v_max=10.0,
                      learning_rate=1e-30, start_e=0.0, end_e=0.0)
    init, train_chunk, _ = c51.make_train(args)
    state = jax.jit(init)(jax.random.key(0))
    state = state._replace(learner=state.learner._replace(network=network))
    buffer = jax.jit(train_chunk)(state)[0].buffer
    actions = np.asarray(buffer.transitions.action)[:, :int(buffer.size)]  # the rollouts' actions
    assert actions.size == 64 and (actions == 1).all(), actions
    assert int(jnp.argmax(logits.max(axis=1))) == 0  # the likeliest atom is action 0's


def test_training_leaves_the_support_alone(c51):
    init, train_chunk, _ = c51.make_train(small_args(c51, C51, n_atoms=11, v_min=-1.0,
                                                     v_max=4.0))
    state = jax.jit(train_chunk)(jax.jit(init)(jax.random.key(0)))[0]
    for network in (state.network, state.learner.target_network):
        np.testing.assert_array_equal(network.atoms, jnp.linspace(-1.0, 4.0, 11))


# ---------------------------------------------------------------------------------------------
# The loss, by hand.


def project(values, probs, atoms):
    """A distribution (probs on values) onto evenly spaced atoms: clipped to [atoms[0],
    atoms[-1]], each value's probability split between the two atoms around it, in proportion
    to closeness."""
    out = np.zeros(len(atoms))
    spacing = atoms[1] - atoms[0]
    for value, p in zip(np.clip(values, atoms[0], atoms[-1]), probs):
        position = (value - atoms[0]) / spacing
        lower = min(int(np.floor(position)), len(atoms) - 2)
        upper_share = position - lower
        out[lower] += p * (1 - upper_share)
        out[lower + 1] += p * upper_share
    return out


def softmax(logits):
    logits = np.asarray(logits, np.float64)
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def test_projection_by_hand():
    """The numpy projection that the loss test compares with, on cases worked out on paper."""
    atoms = np.array([0.0, 1.0, 2.0, 3.0])
    np.testing.assert_allclose(project([1.25], [1.0], atoms), [0, 0.75, 0.25, 0])
    np.testing.assert_allclose(project([-5.0, 3.0, 9.0], [0.2, 0.3, 0.5], atoms), [0.2, 0, 0, 0.8])
    np.testing.assert_allclose(project([0.5, 2.0], [0.5, 0.5], atoms), [0.25, 0.25, 0.5, 0])


@pytest.mark.parametrize("double_q", [False, True])
def test_loss_is_the_cross_entropy_to_the_projected_target(c51, double_q):
    """One transition by hand: the target network's distribution of a* at next_obs, a* the
    argmax of the target network's (C51) or the online network's (double) expected values, on
    the atoms moved to r + gamma (1 - terminated) z, projected onto the atoms; the loss is
    -sum_i target_i log p_i(obs, a). Terminated: all the mass on the two atoms around r."""
    obs, next_obs = jnp.array([0.1, -0.2, 0.3, 0.05]), jnp.array([0.2, 0.1, -0.3, 0.5])
    n_atoms, v_min, v_max = 11, -5.0, 5.0
    atoms = np.linspace(v_min, v_max, n_atoms)
    for seed in range(50):  # two networks whose greedy actions at next_obs differ
        key_0, key_1 = jax.random.split(jax.random.key(seed))
        network = c51.QNetwork(key_0, (4,), 3, n_atoms, v_min, v_max)
        target_network = c51.QNetwork(key_1, (4,), 3, n_atoms, v_min, v_max)
        p_next = softmax(target_network(next_obs))  # [A, K]
        q_next, q_next_online = p_next @ atoms, softmax(network(next_obs)) @ atoms
        if q_next.argmax() != q_next_online.argmax():
            break
    assert q_next.argmax() != q_next_online.argmax()
    a_star = int((q_next_online if double_q else q_next).argmax())
    log_p = np.log(softmax(network(obs)))  # [A, K]
    args = c51.Args(gamma=0.9, double_q=double_q, n_atoms=n_atoms, v_min=v_min, v_max=v_max)
    # every action taken, so that q_values is seen to be the action's, not the greedy one's
    for action, terminated, reward in [(0, 0.0, 1.3), (1, 0.0, 1.3), (2, 1.0, 1.3),
                                       (1, 0.0, 4.0)]:  # 4 + 0.9 z leaves [-5, 5]
        transition = c51.Transition(obs, jnp.int32(action), jnp.float32(reward),
                                    jnp.float32(terminated), next_obs)
        target = project(reward + 0.9 * (1 - terminated) * atoms, p_next[a_star], atoms)
        if terminated:
            np.testing.assert_allclose(target[[6, 7]], [0.7, 0.3], atol=1e-12)  # 1.3: 1 and 2
        loss, metrics = c51.c51_loss(network, target_network, transition, args)
        assert float(loss) == pytest.approx(-(target * log_p[action]).sum(), rel=1e-5)
        assert float(metrics["q_values"]) == pytest.approx(float(np.exp(log_p[action]) @ atoms),
                                                           rel=1e-5, abs=1e-6)


# ---------------------------------------------------------------------------------------------
# Loading a model of another support.


@pytest.fixture(scope="module")
def saved_model(c51, tmp_path_factory):
    """A small run's model.eqx, 11 atoms on [-5, 5]."""
    from conftest import the_run

    log_dir = tmp_path_factory.mktemp("saved")
    args = small_args(c51, C51, n_atoms=11, v_min=-5.0, v_max=5.0, save_model=True,
                      track=False, log_dir=str(log_dir))
    with pytest.raises(SystemExit) as exit_info:
        c51.main(args)
    assert exit_info.value.code == 0
    return the_run(log_dir).model


def test_training_on_from_a_model_of_another_support_is_refused(c51, saved_model, tmp_path):
    from contract import refused

    message = refused(c51, C51, "--load-model", saved_model, "--n-atoms", 11, "--v-min", -5,
                      "--v-max", 6, "--log-dir", tmp_path)
    assert "--n-atoms 11 --v-min -5.0 --v-max 5.0" in message
    assert not any(tmp_path.iterdir())
    # --eval-only takes the support of the model's own args.json
    _, networks = c51.load_networks(saved_model)
    np.testing.assert_allclose(networks.atoms, np.linspace(-5, 5, 11), atol=1e-6)
    assert networks.head.weight.shape == (1, 2 * 11, 84)  # 1 seed, CartPole's 2 actions x 11 atoms
