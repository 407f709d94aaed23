"""Tests of algos/ppo.py: the contract every algorithm file passes (contract.py), run with
PPO's own flags and sizes, and the tests of what only PPO has."""

from contract import ACTOR_CRITIC_LOSS_TAGS, Algo, ContractTests, TorsoTests

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
    loss_tags=ACTOR_CRITIC_LOSS_TAGS + ("approx_kl", "clipfrac"),
    # 6000 steps round down to 2 chunks of 5 updates of 4 x 128 steps; the rate falls
    # linearly to 0 over the 10 updates and is constant within one.
    tiny_chunk_steps=2560,
    tiny_learning_rates=(2.5e-4 * 0.6, 2.5e-4 * 0.1),
    chain=dict(num_envs=16, num_steps=8, num_minibatches=1, update_epochs=4,
               total_timesteps=12_800, learning_rate=2.5e-3),
    learn_flags=(),  # the defaults: 500k steps
    # learning rate 1e-2, so that the values move further than the clip range in one update
    changed_flags=(("norm_adv", False), ("clip_vloss", False), ("anneal_lr", False)),
    changed_flags_base=dict(learning_rate=1e-2),
)


class TestContract(TorsoTests, ContractTests):
    algo = PPO
    network_class = "ActorCritic"
    torso_fields = ("actor_torso", "critic_torso")
    hidden_sizes = {False: [64, 64], True: [256, 256]}
