"""The contract every algorithm file passes (CONTRIBUTING.md, "What every file does the same
way" and "Tests"), written once. A test file runs it against algos/<name>.py with a
subclass that says what differs between algorithms:

    class TestContract(ContractTests):
        algo = Algo(name="ppo", fast=dict(num_minibatches=2, update_epochs=2), ...)

pytest collects the subclass in test_<name>.py; this module is not collected itself (its name
does not start with test_, nor the class's with Test). Each test asserts on numbers or messages,
and each was checked to fail once with its bug put in by hand.
"""

import ast
import contextlib
import dataclasses
import io
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import (BAD, GOOD, RANDOM_LENGTH, SHORT_PENDULUM, SOMETIMES_NAN, START,
                      TERMINATED_CHAIN, TRUNCATED_CHAIN, Run, algo_path, assert_clean_error,
                      continuous_twin, describe, greedy_returns, load_algo, run_algo, run_file,
                      run_python, subprocess_env, the_run)


def actor_critic_head(network, obs):
    """An actor-critic network's own output: (logits [A], value [])."""
    return network(obs)


def q_network_head(network, obs):
    """A Q-network's action values [A], and the greedy value max_a Q(obs, a)."""
    q = network(obs)
    return q, q.max()


def gaussian_actor_critic_head(network, obs):
    """A Gaussian actor-critic's mean action [A] and value []."""
    mean, _, value = network(obs)
    return mean, value


def critic_value(network, obs, action):
    """Q(obs, action) of a critic, or the smaller of twin critics' (leaves [2, ...])."""
    if hasattr(network, "critics"):
        return jax.vmap(lambda critic: critic(obs, action))(network.critics).min()
    return network.critic(obs, action)


def twin_action_critic_head(network, obs):
    """The critics' view of a continuous twin's two actions, -1 (action 0) and +1 (action 1):
    the preference Q(obs, +1) - Q(obs, -1) [1] and the better value. The chain tests of the
    actor-critic replay files read it: a deterministic actor that follows the gradient of a
    step-shaped Q(start, .) can stay on the side it first took (a local optimum of the policy
    search), while what the chain tests is the targets' bootstrapping."""
    q_0, q_1 = (critic_value(network, obs, jnp.full(1, a)) for a in (-1.0, 1.0))
    return jnp.stack([q_1 - q_0]), jnp.maximum(q_0, q_1)


def deterministic_actor_head(network, obs):
    """A deterministic actor's action mu(obs) [A] and its critics' value of it (TD3, DDPG)."""
    action = network.actor(obs)
    return action, critic_value(network, obs, action)


def squashed_gaussian_actor_head(network, obs):
    """A tanh-squashed Gaussian actor's mean action tanh(mean) [A] and its critics' value (SAC)."""
    mean, _ = network.actor(obs)
    return jnp.tanh(mean), critic_value(network, obs, jnp.tanh(mean))


@dataclasses.dataclass(frozen=True)
class Algo:
    """What the contract tests need to know about one algorithm file."""

    name: str  # algos/<name>.py
    fast: dict  # its own Args fields added to every small run, to keep compiling it short
    help_flags: tuple[str, ...]  # its own flags, which --help must list
    help_text: str  # a docstring of one of its own Args fields, which --help must show
    bad_inputs: tuple  # its own (flags, message fragments) that must be refused
    loss_tags: tuple[str, ...]  # the losses/<tag> it logs; the first is the loss itself
    tiny_chunk_steps: int  # environment steps per seed in each chunk of TINY_FLAGS
    # charts/learning_rate after each chunk of TINY_FLAGS; None: a constant rate, not logged
    tiny_learning_rates: tuple[float, float] | None
    chain: dict  # Args fields that learn the values of the time-limit chain (8 seeds)
    learn_flags: tuple = ()  # flags with which 3 seeds reach learn_threshold on learn_env
    # flags that every command-line run of the contract adds (a replay buffer's
    # --learning-starts must lie within the few thousand steps of a tiny run)
    cli_flags: tuple = ()
    # environment steps per chunk of the Ctrl-C run (400 chunks): the chunk that runs after the
    # signal is the test's main cost
    ctrl_c_chunk_steps: int = 5_000
    # network, one observation -> (action preferences [A], value of the state []): the
    # logits and the critic's value of an actor-critic, Q and max Q of a Q-network
    head: Callable = actor_critic_head
    policy_starts_uniform: bool = True  # an actor-critic's initial policy is near-uniform
    # (Args field, value) pairs of its own flags, each of which must change a small run's
    # parameters against the defaults plus changed_flags_base
    changed_flags: tuple = ()
    changed_flags_base: dict = dataclasses.field(default_factory=dict)
    # Box actions: the file trains on the continuous twins of the test environments (conftest),
    # its greedy action is its mean, and that action's sign is the twins' discrete action
    continuous: bool = False
    # flags that keep a run from changing anything of a loaded model but its weights (a
    # continuous file's running observation statistics)
    frozen_flags: tuple = ()
    # the file normalises observations by running statistics, saved with the network as an
    # Agent(network, obs_rms) (ppo_continuous.py)
    normalizes_obs: bool = False
    # the head that the time-limit chain tests read; None: `head`
    chain_head: Callable | None = None
    # the learning test: environment, and the greedy return each of its 3 seeds reaches
    learn_env: str = "CartPole-v1"
    learn_threshold: float = 475

    @property
    def env(self) -> str:
        """The file's default environment, that of the tiny run."""
        return "Pendulum-v1" if self.continuous else "CartPole-v1"

    def env_id(self, discrete_id: str) -> str:
        """A test environment with two discrete actions (conftest), or its continuous twin."""
        return continuous_twin(discrete_id) if self.continuous else discrete_id

    def greedy(self, preferences):
        """The head's action preferences [..., A] -> the greedy discrete action [...]: the
        argmax, or for a continuous file the sign of its mean action (a twin's action)."""
        preferences = np.asarray(preferences)
        return (preferences[..., 0] > 0).astype(int) if self.continuous else preferences.argmax(-1)


SHARED_FLAGS = ("--env", "--seed", "--num-seeds", "--total-timesteps", "--num-envs",
                "--num-steps", "--learning-rate", "--gamma", "--eval-episodes", "--num-chunks",
                "--log-dir", "--no-track", "--save-model", "--load-model", "--eval-only",
                "--capture-video")
ACTOR_CRITIC_LOSS_TAGS = ("loss", "policy_loss", "value_loss", "entropy", "explained_variance")
# A command-line run of 2 chunks and 2 seeds, with its model saved.
TINY_FLAGS = ("--total-timesteps", 6000, "--num-chunks", 2, "--num-seeds", 2, "--save-model")
# Small runs (with Algo.fast): 2 environments x 16 steps per update, 2 updates in one chunk.
SMALL = dict(num_envs=2, num_steps=16, total_timesteps=64, num_chunks=1)
CHAIN_GAMMA = 0.9
CATCH_EPISODE_STEPS = 9  # Catch-bsuite: the ball falls 9 rows, one per step


def as_flags(fields: dict) -> list:
    """Args fields -> command-line flags."""
    flags = []
    for name, value in fields.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            flags.append(flag if value else "--no-" + flag[2:])
        else:
            flags += [flag, value]
    return flags


def small_args(module, algo: Algo, **fields):
    return module.Args(**{**SMALL, **algo.fast, **fields})


def run_small(module, algo: Algo, num_seeds=1, seed=0, **fields):
    """jit(vmap(train)) of a small configuration -> (state, metrics as host arrays)."""
    _, _, train = module.make_train(small_args(module, algo, **fields))
    keys = jax.random.split(jax.random.key(seed), num_seeds)
    state, metrics = jax.jit(jax.vmap(train))(keys)
    return state, jax.tree.map(np.asarray, metrics)


def leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def same_networks(a, b) -> bool:
    """Whether two networks (any two pytrees of arrays of one structure) hold the same values."""
    return all(np.array_equal(x, y) for x, y in zip(leaves(a), leaves(b), strict=True))


def evaluate_all(module, networks, env_id: str, eval_keys, **params):
    """Returns [S, E] of evaluating networks [S] on keys [S, E], compiled as main compiles it;
    params replace fields of the environment's params."""
    env, env_params = module.make_env(module.Args(env=env_id))
    env_params = env_params.replace(**params)
    sharding = module.seed_sharding(eval_keys.shape[0])
    compiled = module.compile_evaluation(env, env_params, sharding, networks, eval_keys)
    return np.asarray(compiled(networks, eval_keys))


def run_main(module, *flags) -> subprocess.CompletedProcess:
    """main(tyro.cli(Args)) on flags in this process, as the command line runs it -> its exit
    status and output, as a finished subprocess would report them. For the tests about what a
    run does; what only a process shows (exit status and stderr of a refusal, Ctrl-C, the CPU
    cores as devices, a copied file, imports) is tested through real processes. In this
    process JAX has one CPU device, and the test environments of conftest are registered."""
    import tyro

    stdout, stderr = io.StringIO(), io.StringIO()
    with (contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr),
          pytest.raises(SystemExit) as exit_info):
        module.main(tyro.cli(module.Args, args=[str(flag) for flag in flags]))
    status = exit_info.value.code
    if isinstance(status, str):  # sys.exit(message): Python prints it and exits with 1
        stderr.write(status + "\n")
        status = 1
    return subprocess.CompletedProcess(flags, status or 0, stdout.getvalue(), stderr.getvalue())


def refused(module, algo: Algo, *flags) -> str:
    """main(tyro.cli(Args)) on flags in this process, as the command line runs it, for input
    that main must refuse -> its message. main refuses with sys.exit(message): exit status 1,
    the message on stderr, no traceback (test_bad_input_from_the_command_line checks it once)."""
    import tyro

    args = tyro.cli(module.Args, args=[str(flag) for flag in flags])
    with pytest.raises(SystemExit) as exit_info:
        module.main(args)
    message = exit_info.value.code
    assert isinstance(message, str) and message.startswith(f"{algo.name}.py: error: "), message
    assert "\n" not in message
    return message


def copy_run(run, folder, model_bytes=None, **changed_args) -> str:
    """The model file of run in folder, with its args.json beside it (edited, or replaced)."""
    os.makedirs(folder)
    with open(os.path.join(folder, "args.json"), "w") as f:
        json.dump({**run.args, **changed_args}, f)
    path = os.path.join(folder, "model.eqx")
    with open(path, "wb") as f, open(run.model, "rb") as model:
        f.write(model_bytes if model_bytes is not None else model.read())
    return path


def small_flags(algo: Algo, **fields) -> list:
    """The command-line flags of a small configuration (SMALL, Algo.fast, then fields)."""
    return as_flags({**SMALL, **algo.fast, **fields})


@dataclasses.dataclass
class TinyRun:
    """The file copied alone into an empty folder and run there, as a user who copies it
    would: 2 chunks and 2 seeds, its compiled programs kept in the default cache folder,
    ~/.cache/single-file-rl/jax (under $XDG_CACHE_HOME here)."""

    result: subprocess.CompletedProcess
    run: Run  # its run folder, under folder/runs
    folder: str  # the copy's folder
    cache_home: str  # $XDG_CACHE_HOME of the run

    @property
    def cache(self) -> str:
        return os.path.join(self.cache_home, "single-file-rl", "jax")


def run_copy(algo: Algo, folder, cache_home, log_dir) -> subprocess.CompletedProcess:
    """TINY_FLAGS with the copy in folder, from folder, with no cache folder set by the
    environment (so the default one, under cache_home)."""
    return run_file(os.path.join(folder, f"{algo.name}.py"), *TINY_FLAGS, *algo.cli_flags,
                    "--log-dir", log_dir, cwd=folder, XDG_CACHE_HOME=str(cache_home),
                    JAX_COMPILATION_CACHE_DIR="")


class ContractTests:
    algo: Algo  # set by the subclass

    def pytest_generate_tests(self, metafunc):
        """The bad inputs: the shared ones, then the algorithm's own."""
        if "bad_input" in metafunc.fixturenames:
            if self.algo.continuous:
                action_space = [
                    (["--env", "NoSuchEnv-v0"], ["unknown environment 'NoSuchEnv-v0'",
                                                 "Pendulum-v1", "MountainCarContinuous-v0"]),
                    (["--env", "CartPole-v1"], ["discrete", "continuous actions only",
                                                "ppo.py", "dqn.py"])]
            else:
                action_space = [
                    (["--env", "NoSuchEnv-v0"], ["unknown environment 'NoSuchEnv-v0'",
                                                 "CartPole-v1", "Breakout-MinAtar"]),
                    (["--env", "Pendulum-v1"], ["continuous", "discrete actions only",
                                                "ppo_continuous.py", "sac.py", "td3.py",
                                                "ddpg.py"])]
            cases = [
                *action_space,
                (["--num-envs", 0], ["--num-envs", "positive"]),
                (["--num-steps", -3], ["--num-steps", "positive"]),
                (["--num-seeds", 0], ["--num-seeds", "positive"]),
                (["--num-chunks", 0], ["--num-chunks", "positive"]),
                (["--eval-episodes", 0], ["--eval-episodes", "positive"]),
                (["--total-timesteps", 1], ["--total-timesteps", "--num-chunks"]),
                (["--learning-rate", 0], ["--learning-rate"]),
                (["--gamma", 1.5], ["--gamma"]),
                (["--eval-only"], ["--load-model"]),
                (["--load-model", "no/such/model.eqx", "--eval-only"], ["model file not found",
                                                                        "no/such/model.eqx"]),
                *self.algo.bad_inputs]
            metafunc.parametrize("bad_input", cases,
                                 ids=[" ".join(map(str, flags)) for flags, _ in cases])
        if "changed_flag" in metafunc.fixturenames:
            metafunc.parametrize("changed_flag", self.algo.changed_flags,
                                 ids=[f"{field}={value}" for field, value in self.algo.changed_flags])

    @pytest.fixture(scope="class")
    @classmethod
    def module(cls):
        return load_algo(cls.algo.name)

    @classmethod
    def acting(cls, module, state):
        """What evaluate takes of a training state: the network, or the Agent of a file that
        normalises observations (the network and its observation statistics)."""
        if cls.algo.normalizes_obs:
            return module.Agent(network=state.network, obs_rms=state.obs_rms)
        return state.network

    @classmethod
    def load(cls, module, path):
        """A saved model -> what evaluate takes, for all seeds."""
        return (module.load_agents if cls.algo.normalizes_obs else module.load_networks)(path)[1]

    # -----------------------------------------------------------------------------------------
    # Command line: help, a tiny run end to end, loading.

    def test_help_lists_the_flags(self, module):
        result = run_main(module, "--help")
        assert result.returncode == 0, describe(result)
        for flag in SHARED_FLAGS + self.algo.help_flags:
            assert flag in result.stdout, flag
        assert self.algo.help_text in result.stdout  # field docstrings become the help

    @pytest.fixture(scope="class")
    @classmethod
    def tiny_run(cls, tmp_path_factory) -> TinyRun:
        folder, cache_home = tmp_path_factory.mktemp("alone"), tmp_path_factory.mktemp("xdg")
        shutil.copy(algo_path(cls.algo.name), folder / f"{cls.algo.name}.py")
        result = run_copy(cls.algo, folder, cache_home, "runs")
        assert result.returncode == 0, describe(result)
        return TinyRun(result, the_run(folder / "runs"), str(folder), str(cache_home))

    def test_tiny_run_writes_summary_args_events_and_model(self, tiny_run):
        result, run = tiny_run.result, tiny_run.run
        chunk = self.algo.tiny_chunk_steps
        progress = [line for line in result.stdout.splitlines() if line.startswith("step")]
        assert [line.split("|")[0].split()[1] for line in progress] == [f"{chunk:,}",
                                                                        f"{2 * chunk:,}"]
        assert "eval return" in result.stdout.splitlines()[-1]
        assert "compile" in result.stdout.splitlines()[-1]
        env = self.algo.env
        assert os.path.basename(run.path).startswith(f"{env}__{self.algo.name}__0__")

        summary = run.summary
        for key in ["algo", "env", "args", "eval_returns", "train_returns", "sps",
                    "compile_seconds", "wall_seconds", "interrupted", "steps", "devices"]:
            assert key in summary, key
        assert "error" not in summary
        assert (summary["algo"], summary["env"]) == (self.algo.name, env)
        assert summary["args"] == run.args
        assert run.args["total_timesteps"] == 6000 and run.args["num_seeds"] == 2
        assert summary["steps"] == 2 * chunk  # rounded down to whole chunks
        assert summary["interrupted"] is False
        # From the command line, each CPU core is a device and the 2 seeds spread over them.
        assert summary["devices"] == (2 if os.cpu_count() >= 2 else 1)
        assert summary["sps"] > 0 and summary["compile_seconds"] > 0
        assert summary["wall_seconds"] > summary["compile_seconds"]
        for key in ["eval_returns", "train_returns"]:
            assert len(summary[key]) == 2, key
            # CartPole-v1 pays 1 per step and lasts 8 steps at least; Pendulum-v1 pays -16.3
            # to 0 per step for 200 steps
            low, high = (8, 500) if env == "CartPole-v1" else (-16.3 * 200, 0)
            assert all(math.isfinite(r) and low <= r <= high for r in summary[key]), key
        assert os.path.getsize(run.model) > 0

        tags = ["charts/episodic_return", "charts/episodic_length", "charts/SPS"]
        tags += [f"losses/{tag}" for tag in self.algo.loss_tags]
        if self.algo.tiny_learning_rates is not None:
            tags.append("charts/learning_rate")
        for seed in range(2):
            events = run.events(seed)
            for tag in tags:
                assert sorted(events[tag]) == [chunk, 2 * chunk], tag
                assert all(math.isfinite(v) for v in events[tag].values()), tag
            if env == "CartPole-v1":  # it pays 1 per step: an episode's return is its length
                assert events["charts/episodic_return"] == pytest.approx(
                    events["charts/episodic_length"])
            else:  # Pendulum-v1's episodes end at its time limit
                assert set(events["charts/episodic_length"].values()) == {200}
            assert events["charts/episodic_return"][2 * chunk] == pytest.approx(
                summary["train_returns"][seed])
            assert events["eval/episodic_return"] == {
                2 * chunk: pytest.approx(summary["eval_returns"][seed])}
            if self.algo.tiny_learning_rates is not None:
                # the rate the optimiser used in the last update of each chunk
                first, second = self.algo.tiny_learning_rates
                assert events["charts/learning_rate"] == {chunk: pytest.approx(first),
                                                          2 * chunk: pytest.approx(second)}
            else:
                assert "charts/learning_rate" not in events
            if "entropy" in self.algo.loss_tags and not self.algo.continuous:
                assert 0 < events["losses/entropy"][chunk] <= math.log(2) + 1e-6
            if "explained_variance" in self.algo.loss_tags:
                assert all(v <= 1 for v in events["losses/explained_variance"].values())

    def test_same_seed_reproduces_exactly_and_seeds_differ(self, tiny_run, tmp_path, module):
        """Also: this second run of the tiny run's configuration compiles nothing, its programs
        come from the cache folder that the tiny run filled (no entry is added)."""
        first = tiny_run.run
        entries = set(os.listdir(tiny_run.cache))
        result = run_copy(self.algo, tiny_run.folder, tiny_run.cache_home, tmp_path)
        assert result.returncode == 0, describe(result)
        assert set(os.listdir(tiny_run.cache)) == entries
        second = the_run(tmp_path)
        with open(first.model, "rb") as f, open(second.model, "rb") as g:
            assert f.read() == g.read()
        for key in ["eval_returns", "train_returns", "steps"]:
            assert first.summary[key] == second.summary[key], key

        loaded = self.load(module, first.model)
        # (observation statistics count the same steps in every seed)
        for leaf in leaves(loaded.network if self.algo.normalizes_obs else loaded):
            assert leaf.shape[0] == 2
            assert not np.array_equal(leaf[0], leaf[1])

    def test_eval_only_loads_the_saved_model(self, tiny_run, tmp_path, module):
        trained = tiny_run.run
        result = run_main(module, "--load-model", trained.model, "--eval-only", "--log-dir",
                          tmp_path)
        assert result.returncode == 0, describe(result)
        assert not any(line.startswith("step") for line in result.stdout.splitlines())
        run = the_run(tmp_path)
        summary = run.summary
        assert summary["steps"] == 0
        assert run.args["eval_only"] is True and run.args["num_seeds"] == 2
        assert len(summary["eval_returns"]) == 2
        assert all(math.isfinite(r) for r in summary["eval_returns"])
        # Same network, same seed, so the same greedy episodes as at the end of training.
        assert summary["eval_returns"] == pytest.approx(trained.summary["eval_returns"])

    def test_load_model_continues_training_from_it(self, tiny_run, tmp_path, module):
        """With a negligible learning rate, training from a loaded model keeps its weights."""
        trained = tiny_run.run
        result = run_main(module, "--load-model", trained.model, "--num-seeds", 2,
                          "--learning-rate", 1e-30, "--total-timesteps", 1024, "--num-chunks", 1,
                          "--save-model", "--no-track", "--env", self.algo.env,
                          *self.algo.frozen_flags, *self.algo.cli_flags, "--log-dir", tmp_path)
        assert result.returncode == 0, describe(result)
        run = the_run(tmp_path)
        assert not any(name.startswith("seed_") for name in os.listdir(run.path))  # --no-track
        before, after = self.load(module, trained.model), self.load(module, run.model)
        for a, b in zip(leaves(before), leaves(after), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-20)
        assert run.summary["eval_returns"] == pytest.approx(trained.summary["eval_returns"])

    def test_image_observations_train(self, module):
        """Rank-3 observations (MinAtar); rank-2 ones train in the Catch-bsuite and
        DeepSea-bsuite runs of the --capture-video tests."""
        import gymnax

        env, env_params = gymnax.make("Breakout-MinAtar")
        obs_shape = env.observation_space(env_params).shape
        assert len(obs_shape) == 3
        state, metrics = run_small(module, self.algo, env="Breakout-MinAtar")
        assert metrics["finite"].all() and np.isfinite(metrics[self.algo.loss_tags[0]]).all()
        logits, value = self.algo.head(jax.tree.map(lambda x: x[0], state.network),
                                       jnp.zeros(obs_shape))
        assert logits.shape == (env.action_space(env_params).n,) and value.shape == ()
        assert all(np.isfinite(leaf).all() for leaf in leaves(state.network))

    def test_learns(self, tmp_path):
        """Three seeds in one run on Algo.learn_env (CartPole-v1), greedy evaluation."""
        result = run_algo(self.algo.name, "--env", self.algo.learn_env, "--num-seeds", 3,
                          *self.algo.learn_flags, "--no-track", "--log-dir", tmp_path, timeout=600)
        assert result.returncode == 0, describe(result)
        eval_returns = the_run(tmp_path).summary["eval_returns"]
        assert len(eval_returns) == 3
        assert min(eval_returns) >= self.algo.learn_threshold, eval_returns

    # -----------------------------------------------------------------------------------------
    # Each flag of the file's own changes training.

    @pytest.fixture(scope="class")
    @classmethod
    def default_small_run(cls, module):
        """A small run at the defaults (plus Algo.changed_flags_base)."""
        return run_small(module, cls.algo, **cls.algo.changed_flags_base)[0]

    def test_each_flag_changes_training(self, module, default_small_run, changed_flag):
        """Against the default small run, changing one flag changes the parameters."""
        field, value = changed_flag
        state, _ = run_small(module, self.algo, **{**self.algo.changed_flags_base, field: value})
        default = default_small_run.network
        assert [a.shape for a in leaves(state.network)] == [a.shape for a in leaves(default)]
        assert not same_networks(default, state.network)

    # -----------------------------------------------------------------------------------------
    # Truncation: a chain whose episodes end only by a time limit (conftest.TimeLimitChain).

    def train_chain(self, module, env_id):
        """8 seeds on the chain -> (greedy action at start [S], values of start/good/bad [S, 3])."""
        state, _ = run_small(module, self.algo, num_seeds=8, env=self.algo.env_id(env_id),
                             gamma=CHAIN_GAMMA, **self.algo.chain)
        head = self.algo.chain_head or self.algo.head
        preferences, values = jax.vmap(
            lambda net: jax.vmap(lambda obs: head(net, obs))(jnp.eye(3)))(state.network)
        return self.algo.greedy(preferences[:, START]), np.asarray(values)

    def test_truncation_bootstraps_from_the_final_observation(self, module):
        greedy, values = self.train_chain(module, TRUNCATED_CHAIN)
        v_good = 1 / (1 - CHAIN_GAMMA)  # 10: good pays 1 forever, the time limit changes nothing
        np.testing.assert_allclose(values[:, GOOD], v_good, atol=1.0)
        np.testing.assert_allclose(values[:, BAD], 0.0, atol=0.5)
        np.testing.assert_allclose(values[:, START], CHAIN_GAMMA * v_good, atol=1.0)
        assert (greedy == 1).all(), greedy  # 0 + 0.9 * 10 beats 1 + 0.9 * 0

    def test_time_limit_reported_as_termination_changes_the_answer(self, module):
        """The same chain with its time limit reported as `terminated`: the check above is able
        to fail, since this agent, which cannot bootstrap, prefers the immediate reward."""
        greedy, values = self.train_chain(module, TERMINATED_CHAIN)
        np.testing.assert_allclose(values[:, GOOD], 1.0, atol=0.5)
        assert (greedy == 0).all(), greedy

    # -----------------------------------------------------------------------------------------
    # Evaluation: greedy, each episode's reward counted until it ends, --eval-episodes episodes.
    # conftest.RandomLengthEpisodes: the greedy policy's episode of length L returns exactly
    # (1 + a)(2^L - 1), a the greedy action, L drawn at reset.

    @pytest.fixture(scope="class")
    @classmethod
    def untrained(cls, module):
        """An agent as init makes it (near-uniform policy) -> (what evaluate takes of it, its
        greedy action)."""
        env_id = cls.algo.env_id(RANDOM_LENGTH)
        init, _, _ = module.make_train(small_args(module, cls.algo, env=env_id))
        state = jax.jit(init)(jax.random.key(0))
        # the environment's constant observation (normalised by a continuous file's initial
        # statistics to itself)
        preferences, _ = cls.algo.head(state.network, jnp.ones(2))
        if cls.algo.policy_starts_uniform:  # a sampled policy takes both (twin) actions
            spread = preferences[0] if cls.algo.continuous else preferences[1] - preferences[0]
            assert abs(float(spread)) < 0.1
        return cls.acting(module, state), int(cls.algo.greedy(preferences))

    def evaluate_untrained(self, module, untrained, episodes: int, **params):
        agent, _ = untrained
        agents = jax.tree.map(lambda x: x[None], agent)  # one seed
        keys = jax.random.split(jax.random.key(1), (1, episodes))
        return evaluate_all(module, agents, self.algo.env_id(RANDOM_LENGTH), keys, **params)[0]

    def test_evaluation_is_greedy(self, module, untrained):
        """One-step episodes return 1 + the action taken: every one the argmax action."""
        returns = self.evaluate_untrained(module, untrained, 64, max_length=1)
        np.testing.assert_array_equal(returns, np.full(64, 1.0 + untrained[1]))

    def test_evaluation_counts_each_episode_until_it_ends(self, module, untrained):
        """Episodes of 1 to 8 steps: each return is that of one whole greedy episode, none has
        the reward of the next episode added in; and the lengths really differ by key."""
        returns = self.evaluate_untrained(module, untrained, 64)
        valid = greedy_returns(untrained[1], max_length=8)
        assert all(float(r) in valid for r in returns), (sorted(valid), returns)
        assert len({valid[float(r)] for r in returns}) >= 4, returns

    def test_evaluation_runs_eval_episodes_episodes(self, module, tmp_path):
        """The keys and the compiled evaluation have one entry per episode, and main's
        eval_returns are the mean of exactly --eval-episodes episodes per seed."""
        env_id = self.algo.env_id(RANDOM_LENGTH)
        result = run_main(module, *small_flags(self.algo, env=env_id, num_seeds=2,
                                               eval_episodes=3, save_model=True, track=False,
                                               log_dir=tmp_path))
        assert result.returncode == 0, describe(result)
        run = the_run(tmp_path)
        networks = self.load(module, run.model)
        means = {}
        for episodes in (3, 10):
            _, eval_keys, _ = module.seed_keys(0, 2, episodes)
            assert eval_keys.shape == (2, episodes)
            returns = evaluate_all(module, networks, env_id, eval_keys)
            assert returns.shape == (2, episodes)
            means[episodes] = returns.mean(axis=1)
        # Episode returns differ by key, so the mean tells how many episodes ran.
        assert not np.allclose(means[3], means[10])
        assert run.summary["eval_returns"] == pytest.approx(means[3].tolist(), rel=1e-6)

    # -----------------------------------------------------------------------------------------
    # --capture-video: a GIF of one greedy episode of seed 0, with gymnax's renderer.

    @pytest.fixture(scope="class")
    @classmethod
    def catch_video_run(cls, module, tmp_path_factory):
        """Catch-bsuite, or for a continuous file Pendulum-v1 in episodes as short."""
        log_dir = tmp_path_factory.mktemp("video")
        env_id = SHORT_PENDULUM if cls.algo.continuous else "Catch-bsuite"
        result = run_main(module, *small_flags(cls.algo, env=env_id, save_model=True,
                                               capture_video=True, track=False, log_dir=log_dir))
        assert result.returncode == 0, describe(result)
        return result, the_run(log_dir)

    def assert_catch_gif(self, result, run) -> str:
        """One whole Catch episode in episode.gif -> the line that reports it."""
        from PIL import Image

        with Image.open(os.path.join(run.path, "episode.gif")) as gif:
            assert gif.n_frames == CATCH_EPISODE_STEPS
        lines = [line for line in result.stdout.splitlines() if "episode.gif" in line]
        assert len(lines) == 1, describe(result)
        assert f"{CATCH_EPISODE_STEPS} steps" in lines[0], lines[0]
        assert os.path.isfile(os.path.join(run.path, "summary.json"))
        return lines[0]

    def test_capture_video_writes_a_gif_of_one_episode(self, catch_video_run):
        result, run = catch_video_run
        self.assert_catch_gif(result, run)
        # and the rank-2 observations ([10, 5]) trained (Catch-bsuite)
        assert run.summary["steps"] == SMALL["total_timesteps"] and "error" not in run.summary
        assert all(math.isfinite(r) for r in run.summary["eval_returns"])

    def test_eval_only_captures_video_of_a_loaded_model(self, catch_video_run, tmp_path, module):
        """--capture-video on the --eval-only command line counts, whatever the loaded run's
        args.json says (here: no video)."""
        trained_result, trained = catch_video_run
        model = copy_run(trained, tmp_path / "model", capture_video=False)
        result = run_main(module, "--load-model", model, "--eval-only", "--capture-video",
                          "--log-dir", tmp_path / "runs")
        assert result.returncode == 0, describe(result)
        line = self.assert_catch_gif(result, the_run(tmp_path / "runs"))
        # the same network and seed, so the same episode as after training
        trained_line = self.assert_catch_gif(trained_result, trained)
        assert line.split(": ", 1)[1] == trained_line.split(": ", 1)[1]

    def test_capture_video_without_a_renderer_is_a_message(self, tmp_path, module):
        env_id = "Reacher-misc" if self.algo.continuous else "DeepSea-bsuite"
        result = run_main(module, *small_flags(self.algo, env=env_id, capture_video=True,
                                               track=False, log_dir=tmp_path))
        assert result.returncode == 0, describe(result)
        messages = [line for line in result.stderr.splitlines() if "capture-video" in line]
        assert len(messages) == 1, describe(result)
        assert env_id in messages[0] and "renderer" in messages[0], messages[0]
        assert "Traceback" not in result.stderr, describe(result)
        run = the_run(tmp_path)
        assert run.summary["steps"] == SMALL["total_timesteps"] and "error" not in run.summary
        assert len(run.summary["eval_returns"]) == 1
        assert not os.path.exists(os.path.join(run.path, "episode.gif"))

    # -----------------------------------------------------------------------------------------
    # Bad input: one-line messages, no traceback, non-zero exit, before any compile.

    def test_bad_input_gives_a_message(self, module, bad_input, tmp_path):
        flags, fragments = bad_input
        message = refused(module, self.algo, *flags, "--log-dir", tmp_path)
        for fragment in fragments:
            assert fragment in message
        assert os.listdir(tmp_path) == []  # rejected before a run folder was made
        # a file the message names exists (none sends a user to a file still to be written)
        for named in re.findall(r"[\w/]+\.py\b", message):
            assert os.path.isfile(algo_path(os.path.basename(named)[:-3])), named

    def test_unknown_environment_lists_only_ids_it_can_train(self, module, tmp_path):
        message = refused(module, self.algo, "--env", "NoSuchEnv-v0", "--log-dir", tmp_path)
        valid = set(message.split("Valid ids", 1)[1].split(": ", 1)[1].split(", "))
        discrete = ("CartPole-v1", "Acrobot-v1", "Breakout-MinAtar", "Catch-bsuite", TRUNCATED_CHAIN)
        continuous = ("Pendulum-v1", "MountainCarContinuous-v0", "Reacher-misc",
                      continuous_twin(TRUNCATED_CHAIN))
        if self.algo.continuous:
            discrete, continuous = continuous, discrete
        for env_id in discrete:  # (or continuous, for a continuous file): its own
            assert env_id in valid, env_id
        for env_id in continuous:
            assert env_id not in valid, env_id

    def test_bad_input_from_the_command_line(self, tmp_path):
        """What refused() relies on, once through a real process: exit status, stderr."""
        result = run_algo(self.algo.name, "--num-envs", 0, "--log-dir", tmp_path)
        assert_clean_error(result, self.algo.name, "--num-envs", "positive")
        assert os.listdir(tmp_path) == []

    def test_bad_model_files_give_a_message(self, module, tiny_run, tmp_path):
        run = tiny_run.run
        garbage = copy_run(run, tmp_path / "garbage", model_bytes=b"not a model" * 10)
        # another environment, with observations of another shape
        other_env = copy_run(run, tmp_path / "other_env", env="MountainCarContinuous-v0"
                             if self.algo.continuous else "Acrobot-v1")
        no_args = tmp_path / "alone" / "model.eqx"
        no_args.parent.mkdir()
        shutil.copy(run.model, no_args)
        cases = [
            (["--load-model", garbage, "--eval-only"], ["cannot load", garbage]),
            (["--load-model", other_env, "--eval-only"], ["cannot load", other_env]),
            (["--load-model", no_args, "--eval-only"], ["args.json", "beside"]),
            # Training on from a model of 2 seeds needs 2 seeds of the same environment.
            (["--load-model", run.model, "--num-seeds", 1], [f"holds 2 seeds of {self.algo.env}",
                                                             "--num-seeds 2"]),
        ]
        for flags, fragments in cases:
            log_dir = tmp_path / "runs"
            message = refused(module, self.algo, *flags, "--log-dir", log_dir)
            for fragment in fragments:
                assert str(fragment) in message
            assert not log_dir.exists()

    def test_non_finite_loss_stops_with_a_message_naming_step_and_seed(self, module, tmp_path):
        """SometimesNaNReward, one environment per seed: the reward of a poisoned episode turns
        NaN at step 51, in chunk 3 (steps 48 to 64) of 16 steps. The --seed is picked by running
        its keys in-process so that seed 1 goes non-finite and seed 0 stays finite."""
        fields = dict(env=self.algo.env_id(SOMETIMES_NAN), num_seeds=2, num_envs=1, num_steps=16,
                      total_timesteps=160, num_chunks=10, eval_episodes=2)
        # train = init, then train_chunk num_chunks times: the finiteness of each chunk
        _, _, train = module.make_train(small_args(module, self.algo, **fields))
        candidates = range(16)
        keys = jnp.stack([module.seed_keys(seed, 2, 2)[0] for seed in candidates])  # [C, 2]
        _, metrics = jax.jit(jax.vmap(jax.vmap(train)))(keys)
        finite = np.asarray(metrics["finite"])  # [C, 2 seeds, 10 chunks]
        wanted = np.array([[True] * 10, [True] * 3 + [False] * 7])
        picked = [seed for seed, f in zip(candidates, finite) if (f == wanted).all()]
        assert picked, finite  # the precondition: some --seed makes seed 1 alone go non-finite

        result = run_main(module, *small_flags(self.algo, **fields, seed=picked[0],
                                               save_model=True, log_dir=tmp_path))
        assert result.returncode == 1, describe(result)
        assert "Traceback" not in result.stderr, describe(result)
        assert (f"{self.algo.name}.py: error: non-finite loss between steps 48 and 64 in seed 1"
                in result.stderr), describe(result)
        assert len([line for line in result.stdout.splitlines() if line.startswith("step")]) == 3
        run = the_run(tmp_path)
        summary = run.summary
        assert "seed 1" in summary["error"] and "64" in summary["error"]
        assert summary["steps"] == 48
        assert run.args["env"] == fields["env"] and run.args["seed"] == picked[0]
        for agent in range(2):
            assert sorted(run.events(agent)[f"losses/{self.algo.loss_tags[0]}"]) == [16, 32, 48]
        # the model of the last finite chunk
        assert all(np.isfinite(leaf).all() for leaf in leaves(self.load(module, run.model)))

    def test_ctrl_c_stops_after_the_chunk_and_saves(self, tmp_path, tmp_path_factory):
        """Also: --no-compile-cache writes no compilation cache."""
        cache = tmp_path_factory.mktemp("unused_cache")
        # 400 chunks: far longer than the wait for a line.
        steps = 400 * self.algo.ctrl_c_chunk_steps
        command = [algo_path(self.algo.name), "--total-timesteps", steps, "--num-chunks", 400,
                   "--save-model", "--no-compile-cache", *self.algo.cli_flags, "--log-dir", tmp_path]
        process = subprocess.Popen([sys.executable, *map(str, command)], stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True,
                                   env=subprocess_env(JAX_COMPILATION_CACHE_DIR=str(cache)))
        watchdog = threading.Timer(300, process.kill)  # a hang fails the test, not blocks it
        watchdog.start()
        try:
            first_line = process.stdout.readline()
            if first_line.startswith("note:"):  # 2M steps round down to whole chunks
                first_line = process.stdout.readline()
            assert first_line.startswith("step"), first_line + process.stderr.read()
            process.send_signal(signal.SIGINT)
            stdout, stderr = process.communicate(timeout=120)
        finally:
            watchdog.cancel()
            if process.poll() is None:
                process.kill()
        assert process.returncode == 130, f"exit {process.returncode}\n{stdout}\n{stderr}"
        assert "interrupted" in stderr and "Traceback" not in stderr, stderr
        chunk = int(first_line.split("|")[0].split()[1].replace(",", ""))
        run = the_run(tmp_path)
        summary = run.summary
        assert summary["interrupted"] is True
        assert summary["steps"] % chunk == 0 and chunk <= summary["steps"] < 400 * chunk
        assert len(summary["eval_returns"]) == 1
        assert os.path.getsize(run.model) > 0
        assert max(run.events(0)[f"losses/{self.algo.loss_tags[0]}"]) == summary["steps"]
        assert os.listdir(cache) == []

    # -----------------------------------------------------------------------------------------
    # The single-file rule.

    def test_runs_when_copied_alone_into_an_empty_folder(self, tiny_run):
        """The tiny run is the file copied alone: it ran, wrote nothing beside itself but its
        runs folder, and kept its compiled programs in the default cache folder (that a rerun
        then compiles nothing: test_same_seed_reproduces_exactly_and_seeds_differ)."""
        assert sorted(os.listdir(tiny_run.folder)) == sorted([f"{self.algo.name}.py", "runs"])
        assert tiny_run.run.summary["steps"] == 2 * self.algo.tiny_chunk_steps
        # init, the training chunk and evaluation at least
        assert len(os.listdir(tiny_run.cache)) >= 3

    def test_imports_only_the_allowed_libraries(self):
        allowed = {"numpy", "jax", "equinox", "optax", "rlax", "gymnax", "tyro", "tensorboardX"}
        with open(algo_path(self.algo.name)) as f:
            tree = ast.parse(f.read())
        imported = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                assert node.level == 0, "relative import"
                imported.add(node.module.split(".")[0])
        assert imported - allowed - set(sys.stdlib_module_names) == set()

    # -----------------------------------------------------------------------------------------
    # Compilation, devices, keys.

    @pytest.fixture(scope="class")
    @classmethod
    def chunk_by_chunk(cls, module):
        """One environment of CartPole, 4 steps per chunk, chunks run until an episode ended;
        the Python body of train_chunk counts its traces."""
        args = small_args(module, cls.algo, env=cls.algo.env_id("CartPole-v1"), num_envs=1,
                          num_steps=4, total_timesteps=4)
        init, train_chunk, _ = module.make_train(args)
        traces = []

        def counted_chunk(state):
            traces.append(1)
            return train_chunk(state)

        chunk_all = jax.jit(jax.vmap(counted_chunk))
        state = jax.jit(jax.vmap(init))(jax.random.split(jax.random.key(0), 2))
        history = []
        for _ in range(100):
            state, metrics = chunk_all(state)
            history.append(jax.tree.map(np.asarray, metrics))
            if len(history) >= 3 and (history[-1]["episode_count"] > 0).all():
                break
        return chunk_all, traces, history

    def test_no_recompilation_across_chunks(self, chunk_by_chunk):
        chunk_all, traces, history = chunk_by_chunk
        assert len(history) >= 3
        assert len(traces) == 1
        assert chunk_all._cache_size() == 1

    def test_chunk_without_finished_episode_reports_zero(self, chunk_by_chunk):
        _, _, history = chunk_by_chunk
        first = history[0]  # 4 CartPole steps: no episode can end yet
        np.testing.assert_array_equal(first["episode_count"], [0, 0])
        np.testing.assert_array_equal(first["episode_return_sum"], [0, 0])
        np.testing.assert_array_equal(first["episode_length_sum"], [0, 0])
        assert first["finite"].all()
        last = history[-1]
        assert (last["episode_count"] == 1).all()
        # An episode ended in the last chunk: its return is its length (CartPole pays 1 per
        # step), which is the number of steps since the previous end.
        np.testing.assert_array_equal(last["episode_return_sum"], last["episode_length_sum"])
        total = sum(h["episode_length_sum"] for h in history)
        assert (total <= 4 * len(history)).all() and (total > 4 * (len(history) - 1)).all()

    def test_chunk_without_finished_episode_logs_nothing(self, tmp_path, module):
        result = run_main(module, *as_flags(self.algo.fast), "--env",
                          self.algo.env_id("CartPole-v1"), "--num-envs", 1, "--num-steps", 4,
                          "--total-timesteps", 200, "--num-chunks", 50, "--log-dir", tmp_path)
        assert result.returncode == 0, describe(result)
        progress = [line for line in result.stdout.splitlines() if line.startswith("step")]
        assert len(progress) == 50 and "(no episode ended)" in progress[0]
        run = the_run(tmp_path)
        events = run.events(0)
        assert sorted(events["charts/SPS"]) == list(range(4, 201, 4))
        returns = events["charts/episodic_return"]
        assert 4 not in returns and 0 < len(returns) < 50
        assert all(value >= 5 for value in returns.values())  # never a 0 for "no episode"
        assert sum("(no episode ended)" in line for line in progress) == 50 - len(returns)
        assert run.summary["train_returns"][0] == pytest.approx(returns[max(returns)])

    @pytest.fixture(scope="class")
    @classmethod
    def fresh_process(cls):
        """One fresh interpreter for what only a new process shows -> its report. First it
        loads the file before anything has imported JAX (so that an environment variable set on
        import would still take effect), then it trains 4 vmapped seeds as main does on 2 host
        devices. The 4 seeds are the regression test of a deadlock, hence the time limit:
        jax/jaxlib 0.10.0-0.11.0 hang on a CPU when batched QR (orthogonal init under vmap)
        runs on parallel devices. (Checked: with jax 0.10.2 on a 2-core CPU, 4 seeds trained
        so hit the time limit; with 0.9.2 they take seconds.)"""
        fields = {**SMALL, **cls.algo.fast, "num_chunks": 2}
        code = f"""
import json, os
before = dict(os.environ)
from algo_files import load_algo
assert "jax" not in sys.modules
module = load_algo({cls.algo.name!r})
import jax, numpy as np
report = dict(environ_unchanged=dict(os.environ) == before,
              num_cpu_devices_set="JAX_NUM_CPU_DEVICES" in os.environ,
              jax_num_cpu_devices=jax.config.jax_num_cpu_devices)
assert len(jax.devices()) == 2, jax.devices()  # the seeds really run on parallel devices
_, _, train = module.make_train(module.Args(**{fields!r}))
sharding = module.seed_sharding(4)
keys = jax.device_put(jax.random.split(jax.random.key(0), 4), sharding)
state, metrics = jax.jit(jax.vmap(train), out_shardings=sharding)(keys)
net = jax.tree.leaves(state.network)
report.update(
    mesh=int(sharding.mesh.devices.size),
    devices=sorted({{len(leaf.sharding.device_set) for leaf in net}}),
    shard_rows=sorted({{shard.data.shape[0] for leaf in net for shard in leaf.addressable_shards}}),
    finite=bool(np.asarray(metrics["finite"]).all()
                and all(np.isfinite(np.asarray(leaf)).all() for leaf in net)))
print(json.dumps(report))
"""
        try:
            result = run_python(code, timeout=180, import_conftest=False, JAX_PLATFORMS="cpu",
                                XLA_FLAGS="--xla_force_host_platform_device_count=2 "
                                          "--xla_backend_optimization_level=0")
        except subprocess.TimeoutExpired:
            pytest.fail("4 vmapped seeds on 2 devices did not finish in 180 s: the jax CPU "
                        "deadlock of batched linear algebra (see requirements.txt)")
        assert result.returncode == 0, describe(result)
        return json.loads(result.stdout.splitlines()[-1])

    def test_importing_the_file_changes_no_jax_setting(self, fresh_process):
        """Exposing CPU cores as devices happens only when the file runs, so a program that
        imports it keeps its own devices."""
        assert {key: fresh_process[key] for key in ("environ_unchanged", "num_cpu_devices_set",
                                                   "jax_num_cpu_devices")} == dict(
            environ_unchanged=True, num_cpu_devices_set=False, jax_num_cpu_devices=-1)

    def test_seeds_shard_over_two_host_devices(self, fresh_process):
        """Training as main does, on 2 host devices: 4 seeds split 2 and 2, in time."""
        assert {key: fresh_process[key] for key in ("mesh", "devices", "shard_rows", "finite")
                } == dict(mesh=2, devices=[2], shard_rows=[2], finite=True)

    def test_seed_axis_goes_to_the_largest_device_count_that_divides_it(self, module):
        """This process has a CPU device per core (conftest), as the command line: on 2 cores,
        2 and 4 seeds spread over both devices, 1 and 3 seeds stay on one."""
        num_devices = len(jax.devices())
        for num_seeds in (1, 2, 3, 4, 6):
            expected = max(d for d in range(1, num_devices + 1) if num_seeds % d == 0)
            assert module.seed_sharding(num_seeds).mesh.size == expected, num_seeds

    def test_no_key_is_reused(self, module):
        args = small_args(module, self.algo, eval_episodes=2)
        init, train_chunk, _ = module.make_train(args)
        env, env_params = module.make_env(args)
        previous = jax.config.jax_debug_key_reuse
        jax.config.update("jax_debug_key_reuse", True)
        try:
            train_keys, eval_keys, _ = module.seed_keys(0, 1, 2)
            state = jax.jit(init)(train_keys[0])
            state, metrics = jax.jit(train_chunk)(state)
            agent = self.acting(module, state)
            returns = jax.jit(jax.vmap(lambda key: module.evaluate(agent, key, env,
                                                                   env_params)))(eval_keys[0])
        finally:
            jax.config.update("jax_debug_key_reuse", previous)
        assert bool(metrics["finite"]) and np.isfinite(np.asarray(returns)).all()


# ---------------------------------------------------------------------------------------------
# The replay buffer of dqn.py, c51.py and qr_dqn.py: the same buffer written in each file.

# Their own bad inputs, beside the shared ones (replay_algo adds them to Algo.bad_inputs).
REPLAY_BAD_INPUTS = (
    (["--buffer-size", 100, "--batch-size", 128], ["--buffer-size", "--batch-size"]),
    # 10 environments: 105 transitions round down to 100
    (["--num-envs", 10, "--buffer-size", 105, "--batch-size", 101],
     ["--buffer-size", "--num-envs", "101"]),
    (["--learning-starts", 500_000], ["--learning-starts", "--total-timesteps"]),
    (["--learning-starts", -1], ["--learning-starts"]),
    (["--train-frequency", 3], ["--train-frequency", "--num-envs", "multiple"]),
    (["--batch-size", 0], ["--batch-size", "positive"]),
    (["--tau", 0], ["--tau"]),
)
EPSILON_BAD_INPUTS = (
    (["--start-e", 1.5], ["--start-e", "[0, 1]"]),
    (["--end-e", -0.1], ["--end-e", "[0, 1]"]),
    (["--exploration-fraction", 0], ["--exploration-fraction"]),
)
REPLAY_HELP_FLAGS = ("--buffer-size", "--batch-size", "--learning-starts", "--train-frequency",
                     "--tau")
Q_LEARNING_HELP_FLAGS = ("--target-network-frequency", "--start-e", "--end-e",
                         "--exploration-fraction", "--double-q")


def replay_algo(name: str, help_flags: tuple[str, ...], help_text: str, bad_inputs: tuple,
                loss_tags: tuple[str, ...], head: Callable, fast: dict | None = None,
                chain: dict | None = None, learn_flags: tuple = (),
                changed_flags: tuple = ()) -> Algo:
    """The Algo of a Q-learning file with the replay buffer: what dqn.py, c51.py and qr_dqn.py
    share, with the file's own flags, bad inputs, logged losses and head; fast, chain and
    changed_flags add its own."""
    return Algo(
        name=name,
        # small runs: 2 environments x 16 steps per update, 8 gradient steps of 32 per update
        fast=dict(learning_starts=0, train_frequency=4, batch_size=32, buffer_size=256,
                  target_network_frequency=32, **(fast or {})),
        help_flags=REPLAY_HELP_FLAGS + Q_LEARNING_HELP_FLAGS + help_flags,
        help_text=help_text,
        bad_inputs=(*bad_inputs, *REPLAY_BAD_INPUTS, *EPSILON_BAD_INPUTS),
        loss_tags=loss_tags,
        # 6000 steps round down to 2 chunks of 300 updates of 10 x 1 steps
        tiny_chunk_steps=3000,
        tiny_learning_rates=None,  # Adam at a constant rate; charts/epsilon instead
        chain=dict(num_envs=16, num_steps=1, train_frequency=16, total_timesteps=16_000,
                   learning_rate=1e-3, target_network_frequency=160, **(chain or {})),
        learn_flags=learn_flags,
        cli_flags=("--learning-starts", 1000),
        head=head,
        policy_starts_uniform=False,
        # --double-q: over 48 gradient steps (6 updates) at a large learning rate, the online and
        # target networks come to disagree on some next state's greedy action, and then the
        # targets differ
        changed_flags=(("double_q", True), *changed_flags),
        changed_flags_base=dict(learning_rate=1e-2, total_timesteps=192),
    )


def continuous_replay_algo(name: str, help_flags: tuple[str, ...], help_text: str,
                           bad_inputs: tuple, loss_tags: tuple[str, ...], head: Callable,
                           chain: dict, learn_flags: tuple, changed_flags: tuple) -> Algo:
    """The Algo of an actor-critic file with the replay buffer: what sac.py, td3.py and
    ddpg.py share, with the file's own flags, bad inputs, logged losses, head, chain settings,
    learning run and changed flags."""
    return Algo(
        name=name,
        # small runs: 2 environments x 16 steps per update, 8 gradient steps of 32 per update
        fast=dict(learning_starts=0, train_frequency=4, batch_size=32, buffer_size=256),
        help_flags=REPLAY_HELP_FLAGS + help_flags,
        help_text=help_text,
        bad_inputs=(*bad_inputs, *REPLAY_BAD_INPUTS),
        loss_tags=loss_tags,
        # 6000 steps round down to 2 chunks of 3000 updates of 1 x 1 steps
        tiny_chunk_steps=3000,
        tiny_learning_rates=None,  # Adam at a constant rate
        # 16 environments, one gradient step per update, 1000 in all, every transition kept,
        # wide exploration noise so that both twin actions are tried in every state
        chain=dict(num_envs=16, num_steps=1, train_frequency=16, total_timesteps=16_000,
                   learning_rate=1e-3, buffer_size=16_000, **chain),
        chain_head=twin_action_critic_head,
        learn_flags=learn_flags,
        learn_env="Pendulum-v1",
        learn_threshold=-250,
        # command-line runs: learning from step 1000, on minibatches of 64 (256-256 networks
        # on 256 transitions cost about 5 ms a gradient step on one core)
        cli_flags=("--learning-starts", 1000, "--batch-size", 64),
        # the first chunk acts at random until --learning-starts, the second (after the signal)
        # takes 1000 gradient steps; 5000 took 120-220 s of a worker (2026-12-07)
        ctrl_c_chunk_steps=1_000,
        head=head,
        policy_starts_uniform=False,
        changed_flags=changed_flags,
        changed_flags_base=dict(learning_rate=1e-2, total_timesteps=192),
        continuous=True,
    )


def train_chunks(module, algo: Algo, chunks: int, **fields):
    """init, then `chunks` chunks of a small configuration, one seed -> (the states: the
    initial one and one after each chunk, the metrics of each chunk)."""
    init, train_chunk, _ = module.make_train(small_args(module, algo, **fields))
    state = jax.jit(init)(jax.random.key(0))
    chunk = jax.jit(train_chunk)
    states, history = [state], []
    for _ in range(chunks):
        state, metrics = chunk(state)
        states.append(state)
        history.append(jax.tree.map(np.asarray, metrics))
    return states, history


class ReplayBufferTests:
    """Mixed into the contract class of a file with the replay buffer (per-environment rows
    [N, C] in a NamedTuple, buffer_add for one step of every environment, uniform sampling)
    and --learning-starts. Its Algo.fast must set learning_starts=0 and 2 x 16 steps per update
    with train_frequency 4, as dqn.py's does."""

    algo: Algo
    # Above 0 always; a file with a known scale of its first loss sets a bound (c51.py's
    # cross-entropy of near-uniform distributions on K atoms lies near log K).
    first_loss_below: float = math.inf
    values_tag: str = "q_values"  # the logged action values, not 0 once learning runs

    def one_transition(self, module, value: float, num_envs: int):
        """A step of num_envs environments whose fields all hold `value` + the environment
        index (observations of 2 entries; an action of 1 entry for a continuous file)."""
        fill = value + jnp.arange(num_envs, dtype=jnp.float32)
        action = fill[:, None] if self.algo.continuous else fill.astype(jnp.int32)
        return module.Transition(obs=jnp.stack([fill, fill], axis=1), action=action,
                                 reward=fill, terminated=fill,
                                 next_obs=jnp.stack([fill, -fill], axis=1))

    def test_buffer_wraps_around_and_overwrites_the_oldest_rows(self, module):
        num_envs, rows = 3, 5
        like = jax.tree.map(lambda x: x[0], self.one_transition(module, 0.0, num_envs))
        buffer = module.buffer_init(like, num_envs, rows)
        add = jax.jit(module.buffer_add)
        for step in range(7):  # steps 1..7 hold values 100, 200, ..., 700
            buffer = add(buffer, self.one_transition(module, 100.0 * (step + 1), num_envs))
            assert int(buffer.size) == min(step + 1, rows)
            assert int(buffer.position) == (step + 1) % rows
        # rows 0 and 1 were overwritten by steps 6 and 7; rows 2-4 hold steps 3-5
        expected = np.array([600, 700, 300, 400, 500], np.float32)
        stored = buffer.transitions
        for env in range(num_envs):
            np.testing.assert_array_equal(stored.reward[env], expected + env)
            np.testing.assert_array_equal(stored.terminated[env], expected + env)
            action = stored.action[env].ravel()  # [C], or [C, 1] for a continuous file
            np.testing.assert_array_equal(action, (expected + env).astype(action.dtype))
            np.testing.assert_array_equal(stored.obs[env], np.stack([expected + env] * 2, 1))
            np.testing.assert_array_equal(stored.next_obs[env, :, 1], -(expected + env))

    def test_sampling_stays_inside_the_filled_part(self, module):
        """Before the buffer wraps, only written rows come back, every one of them in time; the
        empty rows (zeros) never do. After it wraps, every slot can, and no overwritten value."""
        num_envs, rows, batch = 2, 50, 64
        like = jax.tree.map(lambda x: x[0], self.one_transition(module, 0.0, num_envs))
        buffer = module.buffer_init(like, num_envs, rows)
        add = jax.jit(module.buffer_add)
        indices = jax.jit(module.buffer_sample_indices, static_argnums=2)
        sample = jax.jit(module.buffer_sample, static_argnums=2)
        for step in range(3):
            buffer = add(buffer, self.one_transition(module, 10.0 * (step + 1), num_envs))
        keys = jax.random.split(jax.random.key(0), 100)
        env, row = jax.vmap(lambda key: indices(buffer, key, batch))(keys)
        assert set(np.asarray(row).ravel()) == {0, 1, 2}
        assert set(np.asarray(env).ravel()) == {0, 1}
        rewards = np.asarray(jax.vmap(lambda key: sample(buffer, key, batch))(keys).reward)
        assert set(rewards.ravel()) == {10, 11, 20, 21, 30, 31}  # never an empty row's 0

        for step in range(3, 60):  # steps 51..60 overwrite rows 0..9
            buffer = add(buffer, self.one_transition(module, 10.0 * (step + 1), num_envs))
        env, row = jax.vmap(lambda key: indices(buffer, key, batch))(keys)
        assert set(np.asarray(row).ravel()) == set(range(rows))
        rewards = np.asarray(jax.vmap(lambda key: sample(buffer, key, batch))(keys).reward)
        written = {10.0 * (step + 1) + env for step in range(10, 60) for env in range(num_envs)}
        assert set(rewards.ravel()) == written  # all 100 slots, none of the overwritten values

    def test_no_gradient_step_before_learning_starts(self, module):
        """Chunks of 32 steps, learning from step 96: the network is untouched for the first two
        chunks, which log no loss (NaN), and the third chunk takes one update of gradient steps."""
        loss_tag = self.algo.loss_tags[0]
        states, history = train_chunks(module, self.algo, 4, learning_starts=96,
                                       total_timesteps=128, num_chunks=4)
        for chunk in (1, 2):
            assert same_networks(states[0].network, states[chunk].network)
            assert int(states[chunk].learner.gradient_steps) == 0
            assert np.isnan(history[chunk - 1][loss_tag]) and history[chunk - 1]["finite"]
        assert not same_networks(states[0].network, states[3].network)
        # the update that reached step 96 and the one after: 8 gradient steps each
        assert int(states[3].learner.gradient_steps) == 8
        assert int(states[4].learner.gradient_steps) == 16
        assert 0 < history[2][loss_tag] < self.first_loss_below
        assert history[2][self.values_tag] != 0


# ---------------------------------------------------------------------------------------------
# Mixins for what some files share beyond the contract.


class ContinuousActionTests:
    """Mixed into the contract class of a continuous-action file: the networks act in [-1, 1]
    and `to_env_action` maps that onto the environment's bounds."""

    def test_actions_map_onto_the_environment_bounds(self, module):
        """[-1, 1] onto [low, high] per dimension, linearly, clipped beyond: Pendulum-v1's torque
        reaches +-2 (a policy clipped to [-1, 1] in the environment's units would stop at +-1)."""
        import gymnax

        env, env_params = gymnax.make("Pendulum-v1")
        low, high = module.action_bounds(env, env_params)
        np.testing.assert_array_equal(low, [-2.0])
        np.testing.assert_array_equal(high, [2.0])
        to_env = jax.vmap(lambda a: module.to_env_action(a, low, high))
        np.testing.assert_allclose(to_env(jnp.array([[-3.0], [-1.0], [0.0], [0.5], [1.0], [7.0]])),
                                   [[-2.0], [-2.0], [0.0], [1.0], [2.0], [2.0]])
        # bounds that differ by dimension, and are not symmetric
        low, high = jnp.array([0.0, -0.1]), jnp.array([1.0, 0.3])
        np.testing.assert_allclose(module.to_env_action(jnp.array([-1.0, 1.0]), low, high),
                                   [0.0, 0.3])
        np.testing.assert_allclose(module.to_env_action(jnp.array([0.0, 0.0]), low, high),
                                   [0.5, 0.1], rtol=1e-6)


class RandomActionsTests:
    """Mixed into the contract class of a continuous file with a replay buffer: uniform random
    actions over the bounds until --learning-starts, the policy's after."""

    # the spread of an untrained policy's actions stays below this (a deterministic actor plus
    # its noise); None: a stochastic policy, whose first samples can spread as widely as
    # uniform ones
    policy_action_std_below: float | None = 0.4

    def test_uniform_random_actions_before_learning_starts(self, module):
        """2 environments x 16 steps per update, 4 updates, learning from step 100: each
        environment's rows 0-49 (steps 0-99) hold uniform actions in [-1, 1], rows 50-63 the
        untrained policy's, which are nothing like them."""
        state, _ = run_small(module, self.algo, learning_starts=100, total_timesteps=128)
        actions = np.asarray(state.buffer.transitions.action)[0, :, :, 0]  # [N, C] of seed 0
        uniform, policy = actions[:, :50].ravel(), actions[:, 50:64].ravel()
        assert -1 <= uniform.min() < -0.9 and 0.9 < uniform.max() <= 1
        assert abs(uniform.mean()) < 0.15 and abs(uniform.std() - 1 / np.sqrt(3)) < 0.1
        if self.policy_action_std_below is not None:  # near one action, the policy's
            assert policy.std() < self.policy_action_std_below


class CorrelatedNoiseTests:
    """Mixed into the contract class of a continuous file with a replay buffer and
    --noise-correlation: each environment's exploration noise is an AR(1) (Ornstein-Uhlenbeck)
    process restarted at 0 at every episode start, and the action is that of the noise."""

    # the flag of the noise's std in the long run (td3.py, ddpg.py); None: a standard normal
    # (sac.py's, which the policy's std scales)
    noise_std_flag: str | None = "exploration_noise"

    def action_of_noise(self, module, actor, obs, noise):
        """The action of an actor given its noise: clip(mu(s) + noise, -1, 1)."""
        return jnp.clip(actor(obs) + noise, -1, 1)

    def test_exploration_noise_is_ar1_and_restarts_with_each_episode(self, module):
        """256 environments of a 9-step Pendulum, one step per chunk, the actor kept as it was
        (a learning rate of 1e-30): after its t-th step of an episode an environment's noise has
        the AR(1) std sigma sqrt(1 - rho^2t) (white noise: sigma at every step), the innovations
        x_t - rho x_t-1 have std sigma sqrt(1 - rho^2), the noise is 0 after an episode's last
        step, and every action is the action of its noise."""
        rho, num_envs, steps = 0.9, 256, 10
        sigma = 0.5 if self.noise_std_flag else 1.0
        std_flag = {self.noise_std_flag: sigma} if self.noise_std_flag else {}
        states, _ = train_chunks(module, self.algo, steps, env=SHORT_PENDULUM, num_envs=num_envs,
                                 num_steps=1, train_frequency=num_envs, num_chunks=steps,
                                 total_timesteps=steps * num_envs, buffer_size=16 * num_envs,
                                 learning_rate=1e-30, noise_correlation=rho, **std_flag)
        noise = np.stack([np.asarray(state.envs.noise) for state in states[1:]])  # [10, N, A]
        innovation_std = sigma * np.sqrt(1 - rho**2)
        assert np.std(noise[0]) == pytest.approx(innovation_std, rel=0.15)
        assert np.std(noise[7]) == pytest.approx(sigma * np.sqrt(1 - rho**16), rel=0.15)
        assert np.std(noise[1:8] - rho * noise[:7]) == pytest.approx(innovation_std, rel=0.1)
        assert np.all(noise[8] == 0)  # the 9th step ended every episode
        assert np.std(noise[9]) == pytest.approx(innovation_std, rel=0.15)
        transitions = jax.tree.map(np.asarray, states[-1].buffer.transitions)  # [N, C, ...]
        actor = states[0].network.actor
        expected = jax.vmap(jax.vmap(lambda obs, x: self.action_of_noise(module, actor, obs, x)))(
            transitions.obs[:, :steps], noise.swapaxes(0, 1))  # [N, 10, A]
        used = [t for t in range(steps) if t != 8]  # step 8's noise was not kept (the restart)
        np.testing.assert_allclose(transitions.action[:, used], np.asarray(expected)[:, used],
                                   atol=1e-5)


class TorsoTests:
    """Mixed into the contract class of a file whose network is `network_class(key, obs_shape,
    num_actions)` with a Torso: an MLP on flattened vectors and matrices, the CNN on images
    (the contract's test_image_observations_train and Catch-bsuite runs train both)."""

    network_class: str  # the network's class name in the file
    torso_fields: tuple[str, ...] = ("torso",)  # the network's fields that hold a Torso
    hidden_sizes: dict  # {uses the conv: the out_features of torso.layers}

    @pytest.mark.parametrize("obs_shape, conv", [((4,), False), ((10, 5), False),
                                                 ((10, 10, 4), True)])
    def test_torso_follows_the_observation_rank(self, module, obs_shape, conv):
        import equinox as eqx

        network = eqx.filter_eval_shape(getattr(module, self.network_class), jax.random.key(0),
                                        obs_shape, 3)
        for torso in (getattr(network, field) for field in self.torso_fields):
            assert (torso.conv is not None) == conv
            first_layer = torso.conv if conv else torso.layers[0]
            assert first_layer.in_features == (9 * obs_shape[-1] if conv else math.prod(obs_shape))
            assert [layer.out_features for layer in torso.layers] == self.hidden_sizes[conv]


class EpsilonScheduleTests:
    """Mixed into the contract class of an epsilon-greedy file (CleanRL's linear schedule,
    charts/epsilon the epsilon of each chunk's last step)."""

    algo: Algo
    # a run of RandomLengthEpisodes long enough for its mean return to tell the policies apart
    epsilon_run: dict = dict(total_timesteps=512)

    def test_epsilon_falls_linearly_then_stays(self, module):
        """start_e 1 to end_e 0.1 over half of 320 steps; chunks of 32 steps report the epsilon
        of their last step."""
        _, history = train_chunks(module, self.algo, 10, total_timesteps=320, num_chunks=10,
                                  start_e=1.0, end_e=0.1, exploration_fraction=0.5)
        last_steps = 32 * np.arange(1, 11) - 2  # 2 environments: the last step starts at 30, 62, ...
        expected = np.maximum(1.0 - 0.9 * last_steps / 160, 0.1)
        np.testing.assert_allclose([h["epsilon"] for h in history], expected, rtol=1e-6)

    def test_epsilon_one_acts_at_random_and_zero_greedily(self, module):
        """RandomLengthEpisodes pays (1 + a) 2^(t-1) at step t: with epsilon 0 an untrained
        network takes its one greedy action at every step (returns (1 + a)(2^L - 1)); with
        epsilon 1 the actions are mixed, and most returns are not of that form."""
        results = {}
        for epsilon in (0.0, 1.0):
            _, history = train_chunks(module, self.algo, 1, env=RANDOM_LENGTH, learning_rate=1e-30,
                                      start_e=epsilon, end_e=epsilon, **self.epsilon_run)
            results[epsilon] = history[0]["episode_return_sum"] / history[0]["episode_count"]
        network = train_chunks(module, self.algo, 0, env=RANDOM_LENGTH)[0][0].network
        greedy = int(np.argmax(self.algo.head(network, jnp.ones(2))[0]))
        mean_greedy_return = np.mean(list(greedy_returns(greedy, max_length=8)))  # L uniform on 1..8
        assert results[0.0] == pytest.approx(mean_greedy_return, rel=0.25)
        # at random each step pays 1.5 2^(t-1) on average, between the two greedy policies
        assert results[1.0] == pytest.approx(1.5 * np.mean([2 ** L - 1 for L in range(1, 9)]),
                                             rel=0.25)
        assert results[1.0] != pytest.approx(results[0.0], rel=0.1)
