"""Tests of algos/a2c.py: the contract every algorithm file passes (contract.py), run with
A2C's own flags and sizes, and the tests of what only A2C has: its loss and its optimiser."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

from algo_files import load_algo
from contract import ACTOR_CRITIC_LOSS_TAGS, Algo, ContractTests, TorsoTests

A2C = Algo(
    name="a2c",
    fast={},
    help_flags=("--gae-lambda", "--ent-coef", "--vf-coef", "--max-grad-norm"),
    help_text="RMSprop learning rate",
    bad_inputs=((["--gae-lambda", 1.5], ["--gae-lambda"]),),
    loss_tags=ACTOR_CRITIC_LOSS_TAGS,
    # 6000 steps round down to 2 chunks of 37 updates of 16 x 5 steps; the rate is constant.
    tiny_chunk_steps=2960,
    tiny_learning_rates=(7e-4, 7e-4),
    chain=dict(num_envs=16, num_steps=5, total_timesteps=12_800, learning_rate=1e-3),
    learn_flags=(),  # the defaults: 500k steps
    changed_flags=(("gae_lambda", 0.9), ("ent_coef", 0.01), ("vf_coef", 1.0),
                   ("max_grad_norm", 0.01)),
)


class TestContract(TorsoTests, ContractTests):
    algo = A2C
    network_class = "ActorCritic"
    torso_fields = ("actor_torso", "critic_torso")
    hidden_sizes = {False: [64, 64], True: [256, 256]}


@pytest.fixture(scope="module")
def a2c():
    return load_algo("a2c")


def test_loss_is_stable_baselines3s(a2c):
    """-log pi(a|s) A + vf_coef (V(s) - R)^2 - ent_coef H: the value loss has no factor 1/2."""
    args = a2c.Args(vf_coef=0.5, ent_coef=0.01)
    network = a2c.ActorCritic(jax.random.key(0), (4,), 2)
    obs = jnp.array([0.1, -0.2, 0.3, 0.05])
    logits, value = network(obs)
    sample = a2c.Sample(obs=obs, action=jnp.int32(1), value=value, advantage=jnp.float32(2.0),
                        target=value + 3.0)
    loss, metrics = a2c.a2c_loss(network, sample, args)
    probs = np.asarray(jax.nn.softmax(logits), np.float64)
    entropy = -np.sum(probs * np.log(probs))
    expected = {"policy_loss": -np.log(probs[1]) * 2.0, "value_loss": 9.0, "entropy": entropy}
    expected["loss"] = expected["policy_loss"] + 0.5 * 9.0 - 0.01 * entropy
    assert {k: float(v) for k, v in metrics.items()} == pytest.approx(expected, rel=1e-5)
    assert float(loss) == pytest.approx(expected["loss"], rel=1e-5)


def test_optimiser_is_pytorchs_rmsprop(a2c):
    """Two updates from the initial network follow torch.optim.RMSprop(alpha=0.99, eps=1e-5):
    v = 0.99 v + 0.01 g^2 from v = 0, step lr g / (sqrt(v) + eps), no momentum, not centred.
    The state holds v of the clipped gradients, which gives |g| of each update, and the
    parameters' change must be lr |g| / (sqrt(v) + eps)."""
    learning_rate = 7e-4
    args = a2c.Args(num_envs=2, num_steps=16, total_timesteps=32, num_chunks=1,
                    learning_rate=learning_rate)  # one update per chunk
    init, train_chunk, _ = a2c.make_train(args)
    state = jax.jit(init)(jax.random.key(0))
    chunk = jax.jit(train_chunk)
    params = [ravel_pytree(state.network)[0]]  # optax.flatten's order
    nu = [jnp.zeros_like(params[0])]
    for _ in range(2):
        state, _ = chunk(state)
        params.append(ravel_pytree(state.network)[0])
        nu.append(optax.tree_utils.tree_get(state.opt_state, "nu"))
    params, nu = np.asarray(params, np.float64), np.asarray(nu, np.float64)  # [3, P]
    for update in (1, 2):
        grad_squared = (nu[update] - 0.99 * nu[update - 1]) / 0.01
        change = np.abs(params[update] - params[update - 1])
        expected = learning_rate * np.sqrt(grad_squared) / (np.sqrt(nu[update]) + 1e-5)
        # where the gradient's square is well determined (not a small difference of two large v)
        known = grad_squared * 0.01 > 0.2 * nu[update]
        assert known.sum() > 0.5 * known.size, update
        # up to float32's rounding of the parameters on either side of the change
        rounding = 2 * np.spacing(np.abs(params[update]).astype(np.float32))
        np.testing.assert_array_less(np.abs(change - expected)[known],
                                     (2e-3 * expected + rounding)[known])
    # the first step from v = 0 is lr / sqrt(0.01) = 10 lr for a gradient well above eps
    assert np.abs(params[1] - params[0]).max() == pytest.approx(10 * learning_rate, rel=1e-3)
