"""Test-only helpers: running an algorithm file, reading run folders, and small gymnax
environments whose correct behaviour is known. The contract tests every algorithm file must
pass are in contract.py; loading a file as a module and reading event files in
tools/algo_files.py, which the benchmark scripts share.

This process sees each CPU core as a JAX device, as the command line does, so that main run
in-process compiles the programs a command-line run compiles. Importing this file registers the
test environments with gymnax (no JAX operation runs), so a subprocess that does
`import conftest` can train on them too.
"""

import dataclasses
import glob
import json
import os
import subprocess
import sys

# Before JAX's first operation (`import gymnax` runs one), as the files' command line does;
# a subprocess that forces its host device count through XLA_FLAGS keeps that instead.
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ.setdefault("JAX_NUM_CPU_DEVICES", str(os.cpu_count() or 1))
# The tests' own small programs run for milliseconds: LLVM -O0 compiles them about 40% faster
# (measured on pqn.py's small run: 1.9 s against 3.1 s). main's compilation passes the files'
# own options, which take precedence, so main in this process compiles what the command line
# compiles.
os.environ["XLA_FLAGS"] = " ".join([os.environ.get("XLA_FLAGS", ""),
                                    "--xla_backend_optimization_level=0"]).strip()
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "tools"))

import gymnax  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import pytest  # noqa: E402
from flax import struct as flax_struct  # noqa: E402
from gymnax.environments import environment, spaces  # noqa: E402
from gymnax.environments.classic_control import CartPole, Pendulum  # noqa: E402

from algo_files import ROOT, TESTS_DIR, TOOLS_DIR, algo_path, load_algo, read_events  # noqa: E402,F401

# pytest explains failed asserts in test files and here; contract.py holds tests as well.
pytest.register_assert_rewrite("contract")


@pytest.fixture(scope="session", autouse=True)
def compilation_cache(tmp_path_factory):
    """JAX's persistent compilation cache for this test session, in its temporary folder, so
    nothing stale leaks between sessions: a program compiled once, in this process or in a
    subprocess of it, is loaded, not compiled, when a later test builds it again (a
    --eval-only run after training, ...)."""
    folder = str(tmp_path_factory.mktemp("jax_compilation_cache"))
    os.environ["JAX_COMPILATION_CACHE_DIR"] = folder  # the subprocesses' (subprocess_env)
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    # jaxlib 0.9.2 logs harmless CPU-feature lines at error level when it loads a program
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    yield folder


# ---------------------------------------------------------------------------------------------
# Running algorithm files.


def subprocess_env(**extra: str) -> dict:
    """The environment of this process, minus anything that would change JAX's devices."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("XLA_FLAGS", "PYTHONPATH", "JAX_NUM_CPU_DEVICES")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def run_file(path: str, *flags, cwd=None, timeout: float = 180, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, path, *map(str, flags)], cwd=cwd or ROOT,
                          capture_output=True, text=True, timeout=timeout, env=subprocess_env(**env))


def run_algo(algo: str, *flags, **kwargs) -> subprocess.CompletedProcess:
    """`python algos/<algo>.py FLAGS...` from the repository root."""
    return run_file(algo_path(algo), *flags, **kwargs)


def run_python(code: str, timeout: float = 180, import_conftest: bool = True,
               **env) -> subprocess.CompletedProcess:
    """Run a Python snippet in a fresh interpreter with tests/ and tools/ on its path. With
    import_conftest it starts with `from conftest import *` (load_algo, and the test
    environments registered; JAX with one device per core unless the caller's env sets up
    its devices); without, nothing is imported before the snippet."""
    prelude = f"import sys; sys.path[:0] = [{TESTS_DIR!r}, {TOOLS_DIR!r}]\n"
    if import_conftest:
        prelude += "from conftest import *\n"
    return subprocess.run([sys.executable, "-c", prelude + code], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env=subprocess_env(**env))


def describe(result: subprocess.CompletedProcess) -> str:
    """Everything a failing assertion about a subprocess should show."""
    return f"exit {result.returncode}\n--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}"


def assert_clean_error(result: subprocess.CompletedProcess, algo: str, *fragments: str) -> None:
    """Bad input: non-zero exit, a one-line '<algo>.py: error: ...' message, no traceback."""
    assert result.returncode not in (0, None), describe(result)
    assert f"{algo}.py: error:" in result.stderr, describe(result)
    assert "Traceback" not in result.stderr, describe(result)
    for fragment in fragments:
        assert fragment in result.stderr, describe(result)


# ---------------------------------------------------------------------------------------------
# Reading run folders.


@dataclasses.dataclass
class Run:
    """One run folder written by main."""

    path: str

    @property
    def summary(self) -> dict:
        with open(os.path.join(self.path, "summary.json")) as f:
            return json.load(f)

    @property
    def args(self) -> dict:
        with open(os.path.join(self.path, "args.json")) as f:
            return json.load(f)

    @property
    def model(self) -> str:
        return os.path.join(self.path, "model.eqx")

    def events(self, seed: int) -> dict[str, dict[int, float]]:
        return read_events(os.path.join(self.path, f"seed_{seed}"))


def the_run(log_dir) -> Run:
    """The single run folder under log_dir."""
    folders = [p for p in glob.glob(os.path.join(str(log_dir), "*")) if os.path.isdir(p)]
    assert len(folders) == 1, f"expected one run folder in {log_dir}, found {folders}"
    return Run(folders[0])


# ---------------------------------------------------------------------------------------------
# Test environments.
#
# TimeLimitChain: three states with one-hot observations; reset picks start, good or bad
# uniformly. From start, action 0 pays 1 and leads to bad, action 1 pays 0 and leads to good.
# Good pays 1 per step forever, bad pays 0. Every episode ends by the time limit alone
# (max_steps_in_episode = 1), so the correct values are those of the endless chain: with gamma,
# V(good) = 1 / (1 - gamma), V(bad) = 0, Q(start, 1) = gamma / (1 - gamma) > 1 = Q(start, 0)
# for gamma > 1/2. An agent that treats the time limit as a termination sees one-step episodes
# instead: V(good) = 1 and action 0 (pays 1) beats action 1 (pays 0).

START, GOOD, BAD = 0, 1, 2


@flax_struct.dataclass
class ChainState(environment.EnvState):
    position: jax.Array
    time: int


@flax_struct.dataclass
class ChainParams(environment.EnvParams):
    max_steps_in_episode: int = 1


class TwoActions(environment.Environment):
    """The spaces of the test environments: two actions, OBS_SIZE observations in [0, 1]."""

    OBS_SIZE = 2

    @property
    def num_actions(self) -> int:
        return 2

    def action_space(self, params=None):
        return spaces.Discrete(2)

    def observation_space(self, params):
        return spaces.Box(0, 1, (self.OBS_SIZE,), jnp.float32)


class TimeLimitChain(TwoActions):
    OBS_SIZE = 3

    @property
    def default_params(self) -> ChainParams:
        return ChainParams()

    def step_env(self, key, state, action, params):
        at_start = state.position == START
        reward = jnp.where(at_start, action == 0, state.position == GOOD).astype(jnp.float32)
        position = jnp.where(at_start, jnp.where(action == 0, BAD, GOOD), state.position)
        state = ChainState(position=position, time=state.time + 1)
        return self.get_obs(state), state, reward, jnp.array(False), {}

    def reset_env(self, key, params):
        state = ChainState(position=jax.random.randint(key, (), 0, 3), time=jnp.int32(0))
        return self.get_obs(state), state

    def get_obs(self, state, params=None, key=None):
        return jax.nn.one_hot(state.position, 3)


class TerminatingTimeLimitChain(TimeLimitChain):
    """The same chain, but the time limit is (wrongly) reported as a termination."""

    def step_env(self, key, state, action, params):
        obs, state, reward, _, info = super().step_env(key, state, action, params)
        return obs, state, reward, state.time >= params.max_steps_in_episode, info

    def is_truncated(self, state, params):
        return jnp.array(False)


@flax_struct.dataclass
class RandomLengthState(environment.EnvState):
    length: jax.Array  # L, drawn at reset
    time: int


@flax_struct.dataclass
class RandomLengthParams(environment.EnvParams):
    max_length: int = 8
    max_steps_in_episode: int = 100  # never reached: every episode terminates at its length


class ConstantObservation(TwoActions):
    """Two actions and a constant observation [1, 1]: what the agent does cannot depend on
    the state, so its behaviour is the same at every step."""

    def get_obs(self, state, params=None, key=None):
        return jnp.ones(2)


class RandomLengthEpisodes(ConstantObservation):
    """Evaluation bookkeeping, made visible in the return. Reset draws the episode's length L
    uniformly from 1..max_length; the observation is constant, so a greedy policy takes the same
    action a at every step; step t = 1, 2, ... pays (1 + a_t) 2^(t-1) and step L terminates.

    An episode of the greedy policy returns exactly (1 + a)(2^L - 1). Any other return mixes
    actions (a sampled policy) or adds the reward of steps after the end: the auto-reset next
    episode pays from (1 + a) again, and (2^L - 1) + (2^k - 1) is even, never 2^M - 1."""

    @property
    def default_params(self) -> RandomLengthParams:
        return RandomLengthParams()

    def step_env(self, key, state, action, params):
        reward = ((1 + action) * 2.0 ** state.time).astype(jnp.float32)
        state = state.replace(time=state.time + 1)
        return self.get_obs(state), state, reward, state.time >= state.length, {}

    def reset_env(self, key, params):
        length = jax.random.randint(key, (), 1, params.max_length + 1)
        state = RandomLengthState(length=length, time=jnp.int32(0))
        return self.get_obs(state), state


def greedy_returns(greedy_action: int, max_length: int) -> dict[float, int]:
    """RandomLengthEpisodes: the return of each complete greedy episode -> its length."""
    return {float((1 + greedy_action) * (2 ** length - 1)): length
            for length in range(1, max_length + 1)}


@flax_struct.dataclass
class PoisonedState(environment.EnvState):
    poisoned: jax.Array
    time: int


@flax_struct.dataclass
class LongEpisodeParams(environment.EnvParams):
    max_steps_in_episode: int = 1000


class SometimesNaNReward(ConstantObservation):
    """1000-step episodes paying 1 per step, except that in an episode whose reset drew
    `poisoned` (probability 1/2) the reward is NaN from step NAN_AFTER + 1 on. With one
    environment per seed and training shorter than an episode, each seed's first reset decides
    whether its loss goes non-finite, and when."""

    NAN_AFTER = 50

    @property
    def default_params(self) -> LongEpisodeParams:
        return LongEpisodeParams()

    def step_env(self, key, state, action, params):
        state = state.replace(time=state.time + 1)
        reward = jnp.where(state.poisoned & (state.time > self.NAN_AFTER), jnp.nan, 1.0)
        return self.get_obs(state), state, reward.astype(jnp.float32), jnp.array(False), {}

    def reset_env(self, key, params):
        state = PoisonedState(poisoned=jax.random.bernoulli(key), time=jnp.int32(0))
        return self.get_obs(state), state


TRUNCATED_CHAIN = "TimeLimitChain-test"
TERMINATED_CHAIN = "TerminatingTimeLimitChain-test"
RANDOM_LENGTH = "RandomLengthEpisodes-test"
SOMETIMES_NAN = "SometimesNaNReward-test"


# ---------------------------------------------------------------------------------------------
# Continuous twins: each test environment above, and CartPole-v1, with one continuous action
# in [-1, 1] in place of two discrete ones; an action above 0 acts as action 1, any other as
# action 0. The continuous-action files pass the contract on them, with the sign of the
# policy's mean action as their greedy action, so what is known of an environment holds for
# its twin.


class ContinuousActions:
    """Mixin, placed before a two-action environment class: its continuous twin."""

    def action_space(self, params=None):
        return spaces.Box(-1.0, 1.0, (1,), jnp.float32)

    def step_env(self, key, state, action, params):
        return super().step_env(key, state, (action[0] > 0).astype(jnp.int32), params)


def continuous_twin(env_id: str) -> str:
    return f"{env_id.removesuffix('-test')}-continuous-test"


class ShortPendulum(Pendulum):
    """Pendulum-v1 with episodes of 9 steps (truncated), as short as a Catch-bsuite episode: a
    continuous environment that gymnax renders, for the --capture-video tests."""

    @property
    def default_params(self):
        return super().default_params.replace(max_steps_in_episode=9)


SHORT_PENDULUM = "ShortPendulum-test"


def register_test_envs() -> None:
    discrete = [(TRUNCATED_CHAIN, TimeLimitChain), (TERMINATED_CHAIN, TerminatingTimeLimitChain),
                (RANDOM_LENGTH, RandomLengthEpisodes), (SOMETIMES_NAN, SometimesNaNReward)]
    twins = [(continuous_twin(env_id), type(f"Continuous{factory.__name__}",
                                            (ContinuousActions, factory), {}))
             for env_id, factory in [*discrete, ("CartPole-v1", CartPole)]]
    for env_id, factory in [*discrete, *twins, (SHORT_PENDULUM, ShortPendulum)]:
        if env_id not in gymnax.registered_envs:
            gymnax.register(env_id, factory)


register_test_envs()
