"""Tests of algos/ddpg.py: the contract every algorithm file passes (contract.py), on the
continuous twins of its test environments, with the replay buffer's tests."""

from contract import (ContinuousActionTests, ContractTests, CorrelatedNoiseTests,
                      RandomActionsTests, ReplayBufferTests, continuous_replay_algo,
                      deterministic_actor_head)

DDPG = continuous_replay_algo(
    "ddpg", help_flags=("--exploration-noise", "--noise-correlation", "--policy-frequency"),
    help_text="critic steps per actor and target-network step",
    bad_inputs=((["--exploration-noise", -0.1], ["--exploration-noise", "negative"]),
                (["--noise-correlation", 1.0], ["--noise-correlation", "[0, 1)"])),
    loss_tags=("qf1_loss", "qf1_values", "actor_loss"),
    head=deterministic_actor_head,
    # targets that follow fast enough for 1000 gradient steps to reach the chain's values
    chain=dict(tau=0.1, exploration_noise=1.0, batch_size=128),
    learn_flags=("--total-timesteps", 10_000, "--batch-size", 64),
    changed_flags=(("exploration_noise", 0.5), ("noise_correlation", 0.9), ("policy_frequency", 2),
                   ("tau", 0.5)),
)


class TestContract(ContinuousActionTests, RandomActionsTests, CorrelatedNoiseTests,
                   ReplayBufferTests, ContractTests):
    algo = DDPG
    values_tag = "qf1_values"
    # no continuous-action gymnax environment has image observations: not collected here
    test_image_observations_train = None
