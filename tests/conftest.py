"""Test-only helpers: running an algorithm file, loading it as a module, reading run folders,
and small gymnax environments whose correct behaviour is known.

Importing this file registers the test environments with gymnax (no JAX operation runs), so a
subprocess that does `import conftest` can train on them too.
"""

import dataclasses
import glob
import importlib.util
import json
import os
import struct
import subprocess
import sys

import gymnax
import jax
import jax.numpy as jnp
import pytest
from flax import struct as flax_struct
from gymnax.environments import environment, spaces

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS_DIR)
ALGOS_DIR = os.path.join(ROOT, "algos")


# ---------------------------------------------------------------------------------------------
# Running and loading algorithm files.


def algo_path(algo: str) -> str:
    return os.path.join(ALGOS_DIR, f"{algo}.py")


def load_algo(algo: str):
    """Import algos/<algo>.py from its path, as a user who copied the file would."""
    name = f"{algo}_under_test"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, algo_path(algo))
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses need the module registered while it executes
        spec.loader.exec_module(module)
    return sys.modules[name]


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


def run_python(code: str, timeout: float = 180, **env) -> subprocess.CompletedProcess:
    """Run a Python snippet in a fresh interpreter that can `import conftest` and use
    `load_algo` (the test environments are then registered there too)."""
    prelude = f"import sys; sys.path.insert(0, {TESTS_DIR!r}); from conftest import *\n"
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
# Reading run folders and TensorBoard event files.


def read_events(folder: str) -> dict[str, dict[int, float]]:
    """Scalars of all tfevents files in folder: {tag: {step: value}}. Parses the TFRecord
    framing (length, crc, payload, crc) directly, so only tensorboardX's protobufs are needed."""
    from tensorboardX.proto.event_pb2 import Event

    scalars: dict[str, dict[int, float]] = {}
    for path in sorted(glob.glob(os.path.join(folder, "events.out.tfevents.*"))):
        with open(path, "rb") as f:
            data = f.read()
        offset = 0
        while offset < len(data):
            (length,) = struct.unpack_from("<Q", data, offset)
            payload = data[offset + 12: offset + 12 + length]
            offset += 12 + length + 4
            event = Event.FromString(payload)
            for value in event.summary.value:
                scalars.setdefault(value.tag, {})[event.step] = value.simple_value
    return scalars


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


class TimeLimitChain(environment.Environment):
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

    @property
    def num_actions(self) -> int:
        return 2

    def action_space(self, params=None):
        return spaces.Discrete(2)

    def observation_space(self, params):
        return spaces.Box(0, 1, (3,), jnp.float32)


class TerminatingTimeLimitChain(TimeLimitChain):
    """The same chain, but the time limit is (wrongly) reported as a termination."""

    def step_env(self, key, state, action, params):
        obs, state, reward, _, info = super().step_env(key, state, action, params)
        return obs, state, reward, state.time >= params.max_steps_in_episode, info

    def is_truncated(self, state, params):
        return jnp.array(False)


@flax_struct.dataclass
class LongChainParams(environment.EnvParams):
    max_steps_in_episode: int = 1000


class NaNRewardChain(TimeLimitChain):
    """The chain with 1000-step episodes whose reward turns NaN from step NAN_AFTER + 1 on."""

    NAN_AFTER = 50

    @property
    def default_params(self) -> LongChainParams:
        return LongChainParams()

    def step_env(self, key, state, action, params):
        obs, state, reward, terminated, info = super().step_env(key, state, action, params)
        return obs, state, jnp.where(state.time > self.NAN_AFTER, jnp.nan, reward), terminated, info


TRUNCATED_CHAIN = "TimeLimitChain-test"
TERMINATED_CHAIN = "TerminatingTimeLimitChain-test"
NAN_CHAIN = "NaNRewardChain-test"


def register_test_envs() -> None:
    for env_id, factory in [(TRUNCATED_CHAIN, TimeLimitChain),
                            (TERMINATED_CHAIN, TerminatingTimeLimitChain),
                            (NAN_CHAIN, NaNRewardChain)]:
        if env_id not in gymnax.registered_envs:
            gymnax.register(env_id, factory)


register_test_envs()


# ---------------------------------------------------------------------------------------------
# Fixtures.


@pytest.fixture(scope="session")
def ppo():
    return load_algo("ppo")
