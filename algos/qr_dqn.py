"""Quantile-regression DQN (QR-DQN), with double Q-learning as an option, for discrete actions.

QR-DQN (Dabney, Rowland, Bellemare & Munos 2018, https://arxiv.org/abs/1710.10044) is DQN
(Mnih et al. 2015) with a distribution in place of each action value: the network outputs, for
every action, `n_quantiles` values theta_i(s, a) that estimate the quantiles of the return at
the midpoints tau_i = (2i + 1) / (2 n_quantiles). They are regressed, with the quantile Huber
loss of threshold `huber_param` (the paper's kappa), onto the target distribution
r + gamma theta'_j(s', a*) of a target network that follows the online network only every
`target_network_frequency` environment steps; a* and the greedy policy take the argmax of
Q(s, a) = mean_i theta_i(s, a). `--double-q` takes a* from the online network instead (van
Hasselt et al. 2016, https://arxiv.org/abs/1509.06461). Transitions come from `num_envs`
parallel environments acting epsilon-greedily (epsilon falling linearly from `start_e` to
`end_e`) and go into a replay buffer, from which minibatches are sampled uniformly. Everything,
the environments and the buffer included, runs inside one jitted `lax.scan`; `--num-seeds N`
trains N agents at once. The defaults are dqn.py's (CleanRL's and PureJaxRL's CartPole
configuration, with PureJaxRL's 10 environments), with 25 quantiles (the RL Zoo's QR-DQN on
Acrobot-v1 and MountainCar-v0; the paper and Stable-Baselines3-contrib use 200, for Atari) and
kappa = 10 (with the paper's kappa = 1, CartPole-v1's values diverged: docs/qr_dqn.md).
Implementation details, measured returns and speed: docs/qr_dqn.md.

Usage:
    python algos/qr_dqn.py --env CartPole-v1
    python algos/qr_dqn.py --env Breakout-MinAtar --num-seeds 8 --total-timesteps 10000000
    python algos/qr_dqn.py --load-model runs/<run>/model.eqx --eval-only --capture-video
    python algos/qr_dqn.py --help

Environments: any gymnax id with a discrete action space (CartPole-v1, Acrobot-v1,
MountainCar-v0, Catch-bsuite, the MinAtar games, ...), including ids added with
`gymnax.register`. Observations of rank 1 or 2 go through a 120-84 ReLU MLP, rank-3 images
through a small ReLU CNN.

From your own code:
    init, train_chunk, train = make_train(Args(env="CartPole-v1"))
    state, metrics = jax.jit(jax.vmap(train))(jax.random.split(jax.random.key(0), 8))

Reading guide, top to bottom:
    Args             the flags and their defaults
    QNetwork         the network (Torso: an MLP, or a small CNN for images)
    q_loss           the loss of one transition
    ReplayBuffer     the replay buffer: buffer_init, buffer_add, buffer_sample
    make_train       one update's outline (update_step), then its stages in order:
                     collect_rollout with env_step, learn/skip_learning with gradient_step
    evaluate         greedy evaluation episodes; capture_video renders one
    COMMAND LINE     the marker below which everything is the command line (devices, run
                     folder, compilation, logging, saving); copy only what lies above it
                     into research code
"""

import dataclasses
import gc
import json
import math
import os
import signal
import sys
import time
from typing import Any, NamedTuple

if __name__ == "__main__":
    # From the command line, each CPU core is a JAX device, so the seed axis spreads over the
    # cores. This must precede JAX's first operation, which `import gymnax` already runs; a
    # program that imports this file keeps the devices it set up.
    os.environ.setdefault("JAX_NUM_CPU_DEVICES", str(os.cpu_count() or 1))
    # Loading a cached program makes jaxlib 0.9.2 log, at error level, that tuning flags of
    # the compiling CPU (+prefer-no-gather) are not CPU features: harmless, and hidden here.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    # --no-compile-cache must reach JAX before its first compilation (at `import gymnax`), where
    # a JAX_COMPILATION_CACHE_DIR set in the environment would already start the cache.
    if "--no-compile-cache" in sys.argv:
        os.environ["JAX_ENABLE_COMPILATION_CACHE"] = "false"
    # The imports create millions of long-lived objects that the garbage collector would scan
    # again and again: it is paused here and told to skip them below (docs/ppo.md).
    gc.disable()

import equinox as eqx
import gymnax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import rlax
import tyro
from tensorboardX import SummaryWriter

ALGO = "qr_dqn"


@dataclasses.dataclass(frozen=True)
class Args:
    env: str = "CartPole-v1"
    """gymnax environment id (discrete actions)"""
    seed: int = 0
    """seed of the run; the seeds of its agents are derived from it"""
    num_seeds: int = 1
    """number of independent agents trained at once (vmapped, sharded over devices)"""
    total_timesteps: int = 500_000
    """environment steps per agent"""
    num_envs: int = 10
    """parallel environments per agent"""
    num_steps: int = 1
    """steps per environment between two rounds of gradient steps"""
    learning_rate: float = 2.5e-4
    """Adam learning rate"""
    buffer_size: int = 10_000
    """replay buffer capacity in transitions (rounded down to a multiple of --num-envs)"""
    gamma: float = 0.99
    """discount factor"""
    double_q: bool = False
    """double Q-learning: the online network picks the target's action, the target values it"""
    tau: float = 1.0
    """target network update rate: target <- tau online + (1 - tau) target (1: a copy)"""
    target_network_frequency: int = 500
    """environment steps between target network updates (rounded down to whole gradient steps)"""
    batch_size: int = 128
    """transitions sampled from the buffer for each gradient step"""
    n_quantiles: int = 25
    """quantiles of the return estimated per action (the RL Zoo's 25 for Acrobot-v1 and
    MountainCar-v0; the paper's 200 is for Atari)"""
    huber_param: float = 10.0
    """threshold kappa of the quantile Huber loss, quadratic up to this size of a quantile's
    error and linear beyond (the paper's 1 made CartPole-v1's values diverge); 0: the plain
    quantile (absolute) loss"""
    start_e: float = 1.0
    """epsilon of the epsilon-greedy policy at the start"""
    end_e: float = 0.05
    """epsilon at the end of exploration and after"""
    exploration_fraction: float = 0.5
    """fraction of --total-timesteps over which epsilon falls linearly to --end-e"""
    learning_starts: int = 10_000
    """environment steps before the first gradient step"""
    train_frequency: int = 10
    """environment steps (of all --num-envs together) per gradient step"""
    num_chunks: int = 10
    """compiled chunks the run is split into; a progress line and log point after each"""
    eval_episodes: int = 10
    """greedy evaluation episodes per agent at the end"""
    log_dir: str = "runs"
    """folder that receives the run folder"""
    track: bool = True
    """write TensorBoard event files, one subfolder per seed"""
    compile_cache: bool = True
    """keep compiled programs on disk (JAX's persistent compilation cache, in
    ~/.cache/single-file-rl/jax or $JAX_COMPILATION_CACHE_DIR), so a rerun of the same
    configuration does not compile again"""
    save_model: bool = False
    """save the networks of all seeds to model.eqx in the run folder"""
    load_model: str | None = None
    """model.eqx to start from (its args.json must lie beside it)"""
    eval_only: bool = False
    """evaluate the loaded model without training"""
    capture_video: bool = False
    """after training, render one greedy episode of seed 0 to episode.gif in the run folder
    (at most 200 frames; classic control renders about 5 frames a second)"""

    @property
    def steps_per_update(self) -> int:
        """Environment steps of one update: num_steps steps of each of the num_envs."""
        return self.num_envs * self.num_steps

    @property
    def gradient_steps_per_update(self) -> int:
        return self.steps_per_update // self.train_frequency

    @property
    def updates_per_chunk(self) -> int:
        return self.total_timesteps // (self.steps_per_update * self.num_chunks)

    @property
    def buffer_rows(self) -> int:
        """Capacity of each environment's part of the buffer."""
        return self.buffer_size // self.num_envs

    @property
    def target_period(self) -> int:
        """Gradient steps between target network updates."""
        return max(1, self.target_network_frequency // self.train_frequency)

    @property
    def exploration_steps(self) -> int:
        # at least 1: optax.linear_schedule over 0 steps is a Python float, and stays at start_e
        return max(1, int(self.exploration_fraction * self.total_timesteps))


class ConfigError(ValueError):
    """Bad input that main reports as a one-line message."""


def check_args(args: Args) -> None:
    positive = ["num_seeds", "total_timesteps", "num_envs", "num_steps", "buffer_size",
                "batch_size", "train_frequency", "target_network_frequency", "num_chunks",
                "eval_episodes"]
    for name in positive:
        if getattr(args, name) <= 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.steps_per_update % args.train_frequency:
        raise ConfigError(f"--num-envs x --num-steps ({args.steps_per_update}) must be a multiple "
                          f"of --train-frequency ({args.train_frequency})")
    if args.updates_per_chunk == 0 and not args.eval_only:
        raise ConfigError(f"--total-timesteps ({args.total_timesteps}) must be at least --num-envs x "
                          f"--num-steps x --num-chunks ({args.steps_per_update * args.num_chunks})")
    if args.buffer_rows * args.num_envs < args.batch_size:
        raise ConfigError(f"--buffer-size ({args.buffer_size}, rounded down to a multiple of "
                          f"--num-envs {args.num_envs}) must be at least --batch-size "
                          f"({args.batch_size})")
    if not 0 <= args.learning_starts < args.total_timesteps and not args.eval_only:
        raise ConfigError(f"--learning-starts ({args.learning_starts}) must lie in [0, "
                          f"--total-timesteps ({args.total_timesteps})): no gradient step would run")
    if not args.learning_rate > 0:
        raise ConfigError(f"--learning-rate must be positive, got {args.learning_rate}")
    if not 0 <= args.gamma <= 1:
        raise ConfigError("--gamma must lie in [0, 1]")
    if args.n_quantiles < 1:
        raise ConfigError(f"--n-quantiles must be at least 1, got {args.n_quantiles}")
    if not args.huber_param >= 0:
        raise ConfigError(f"--huber-param must be >= 0 (0: the plain quantile loss), got "
                          f"{args.huber_param}")
    if not 0 < args.tau <= 1:
        raise ConfigError(f"--tau must lie in (0, 1], got {args.tau}")
    if not (0 <= args.start_e <= 1 and 0 <= args.end_e <= 1):
        raise ConfigError(f"--start-e ({args.start_e}) and --end-e ({args.end_e}) are "
                          "probabilities and must lie in [0, 1]")
    if not 0 < args.exploration_fraction <= 1:
        raise ConfigError(f"--exploration-fraction must lie in (0, 1], got {args.exploration_fraction}")
    if args.eval_only and args.load_model is None:
        raise ConfigError("--eval-only needs --load-model PATH")


CONTINUOUS_FILES = "ppo_continuous.py, sac.py, td3.py, ddpg.py"


def has_discrete_actions(env_id: str) -> bool:
    """Whether a registered gymnax id builds, with a discrete action space."""
    try:
        env, env_params = gymnax.make(env_id)
        return hasattr(env.action_space(env_params), "n")
    except Exception:  # an id that fails to build is not offered
        return False


def make_env(args: Args):
    if args.env not in gymnax.registered_envs:
        raise ConfigError(f"unknown environment '{args.env}'. Valid ids (discrete actions): "
                          + ", ".join(filter(has_discrete_actions, gymnax.registered_envs)))
    env, env_params = gymnax.make(args.env)
    if not hasattr(env.action_space(env_params), "n"):
        raise ConfigError(f"{args.env} has a continuous action space; {ALGO}.py handles discrete "
                          f"actions only (for continuous actions: {CONTINUOUS_FILES})")
    return env, env_params


# ---------------------------------------------------------------------------------------------
# Network: a torso and a linear head with n_quantiles outputs per action (dqn.py's torso).


def lecun_linear(key, in_features: int, out_features: int) -> eqx.nn.Linear:
    """A Linear layer with LeCun-normal weights (variance 1 / in_features) and zero biases:
    flax's default, so CleanRL's and PureJaxRL's; against orthogonal init: docs/dqn.md."""
    # Shapes only: eval_shape builds the layer without running its default random init.
    layer = eqx.filter_eval_shape(eqx.nn.Linear, in_features, out_features, key=jax.random.key(0))
    weight = jax.nn.initializers.lecun_normal(in_axis=1, out_axis=0)(key, (out_features, in_features))
    return eqx.tree_at(lambda l: (l.weight, l.bias), layer, (weight, jnp.zeros(out_features)))


class Torso(eqx.Module):
    """120-84 ReLU MLP on flattened observations (CleanRL's Q-network); for images [H, W, C] a
    3x3 convolution with 16 channels and a 128-unit layer, ReLU (Young & Tian 2019's MinAtar
    DQN network)."""

    conv: eqx.nn.Linear | None  # the 3x3 convolution, as a Linear layer on 3x3 patches
    layers: tuple[eqx.nn.Linear, ...]

    def __init__(self, key, obs_shape: tuple[int, ...]):
        conv_key, key_0, key_1 = jax.random.split(key, 3)
        if len(obs_shape) == 3:
            height, width, channels = obs_shape
            self.conv = lecun_linear(conv_key, 9 * channels, 16)
            conv_features = 16 * (height - 2) * (width - 2)
            self.layers = (lecun_linear(key_0, conv_features, 128),)
        else:
            self.conv = None
            self.layers = (lecun_linear(key_0, math.prod(obs_shape), 120),
                           lecun_linear(key_1, 120, 84))

    @property
    def out_features(self) -> int:
        return self.layers[-1].out_features

    def __call__(self, obs):
        if self.conv is None:
            x = obs.ravel()
        else:
            # A 'valid' 3x3 convolution: the Linear layer applied to every pixel's 3x3 patch, as
            # a matmul: XLA's CPU convolution gradient is about 50x slower in a loop (docs/ppo.md).
            h, w = obs.shape[0] - 2, obs.shape[1] - 2
            patches = jnp.concatenate([obs[i:i + h, j:j + w] for i in range(3) for j in range(3)],
                                      axis=-1)  # [H - 2, W - 2, 9 C]
            x = jax.nn.relu(jax.vmap(jax.vmap(self.conv))(patches)).ravel()
        for layer in self.layers:
            x = jax.nn.relu(layer(x))
        return x


class QNetwork(eqx.Module):
    """Arrays only, so it is a scan carry, a `jax.grad` argument and an `optax.init` target
    (n_quantiles is static, part of the structure like a Linear layer's sizes)."""

    torso: Torso
    head: eqx.nn.Linear  # A x n_quantiles outputs, action by action
    n_quantiles: int = eqx.field(static=True)

    def __init__(self, key, obs_shape: tuple[int, ...], num_actions: int, n_quantiles: int):
        torso_key, head_key = jax.random.split(key)
        self.torso = Torso(torso_key, obs_shape)
        self.head = lecun_linear(head_key, self.torso.out_features, num_actions * n_quantiles)
        self.n_quantiles = n_quantiles

    def __call__(self, obs):
        """One observation -> the return's quantiles theta(obs, .) [A, n_quantiles], at the
        levels quantile_midpoints(n_quantiles)."""
        return self.head(self.torso(obs.astype(jnp.float32))).reshape(-1, self.n_quantiles)

    def q_values(self, obs):
        """One observation -> action values Q(obs, .) [A]: the mean of each action's quantiles,
        what the greedy and epsilon-greedy policies take the argmax of."""
        return self(obs).mean(axis=-1)


def quantile_midpoints(n_quantiles: int) -> jax.Array:
    """tau_i = (2i + 1) / (2 n_quantiles) [n_quantiles] (rlax's tau_q_tm1): the quantile loss
    drives theta_i to the tau_i-quantile of the return. Midpoints of N equal bins, because the
    distribution of N equal diracs closest to the return's in Wasserstein-1 sits there (the
    paper's Lemma 2)."""
    return (2 * jnp.arange(n_quantiles, dtype=jnp.float32) + 1) / (2 * n_quantiles)


# ---------------------------------------------------------------------------------------------
# Loss of one transition; the minibatch loss is its mean (vmapped in make_train's gradient_step).


class Transition(NamedTuple):
    """What the replay buffer stores of one environment step."""

    obs: jax.Array
    action: jax.Array
    reward: jax.Array
    terminated: jax.Array  # only termination stops bootstrapping; a time limit does not
    next_obs: jax.Array  # the observation the step reached, before any auto-reset


def q_loss(network: QNetwork, target_network: QNetwork, transition: Transition, args: Args):
    """Quantile Huber loss of one transition -> (loss, metrics): rlax's quantile_q_learning,
    the sum over the N quantiles theta_i(s, a) of the mean over the N target samples
    r + discount theta'_j(s', a*) of |tau_i - 1{u_ij < 0}| huber(u_ij), u_ij = target_j -
    theta_i. Like the RL Zoo's (Stable-Baselines3-contrib's), rlax's Huber loss is not divided
    by kappa as the paper's is: the same at kappa = 1, and kappa = 0 is the absolute error."""
    dist_q_tm1 = network(transition.obs)  # [A, N]
    dist_q_t = target_network(transition.next_obs)  # [A, N]
    # What picks a*, by the mean of its quantiles: the target network (QR-DQN), or the online
    # network (double Q).
    dist_q_t_selector = network(transition.next_obs) if args.double_q else dist_q_t
    discount_t = args.gamma * (1.0 - transition.terminated)
    # rlax takes the quantiles first: [N, A].
    loss = rlax.quantile_q_learning(dist_q_tm1.T, quantile_midpoints(args.n_quantiles),
                                    transition.action, transition.reward, discount_t,
                                    dist_q_t_selector.T, dist_q_t.T, args.huber_param)
    # CleanRL's names: the loss, and the value (mean quantile) of the action taken.
    return loss, {"loss": loss, "q_values": dist_q_tm1[transition.action].mean()}


# ---------------------------------------------------------------------------------------------
# Replay buffer: a circular buffer of C rows per environment, on the device, in the scan carry.


class ReplayBuffer(NamedTuple):
    transitions: Transition  # leaves [N, C, ...]: environment n's transitions in row n
    position: jax.Array  # the row the next step writes, the same for every environment
    size: jax.Array  # rows filled so far, at most C


def buffer_init(transition: Transition, num_envs: int, rows: int) -> ReplayBuffer:
    """An empty buffer shaped for `transition` (one environment's, used for shapes only)."""
    transitions = jax.tree.map(lambda x: jnp.zeros((num_envs, rows, *x.shape), x.dtype), transition)
    return ReplayBuffer(transitions, jnp.int32(0), jnp.int32(0))


def buffer_add(buffer: ReplayBuffer, transition: Transition) -> ReplayBuffer:
    """Write one step of every environment (leaves [N, ...]) at `position`, overwriting the
    oldest rows once the buffer is full."""

    def add_one(rows: Transition, one: Transition) -> Transition:  # one environment's rows
        return jax.tree.map(lambda x, y: x.at[buffer.position].set(y), rows, one)

    rows = buffer.transitions.obs.shape[1]
    return ReplayBuffer(jax.vmap(add_one)(buffer.transitions, transition),
                        (buffer.position + 1) % rows, jnp.minimum(buffer.size + 1, rows))


def buffer_sample_indices(buffer: ReplayBuffer, key, batch_size: int):
    """Uniform over the filled part -> (environment [B], row [B]): every environment's part has
    `size` filled rows, so a uniform environment and a uniform filled row are uniform over all
    filled slots, and a buffer that has not wrapped never returns an empty one."""
    env_key, row_key = jax.random.split(key)
    num_envs = buffer.transitions.obs.shape[0]
    return (jax.random.randint(env_key, (batch_size,), 0, num_envs),
            jax.random.randint(row_key, (batch_size,), 0, buffer.size))


def buffer_sample(buffer: ReplayBuffer, key, batch_size: int) -> Transition:
    env, row = buffer_sample_indices(buffer, key, batch_size)
    return jax.tree.map(lambda x: x[env, row], buffer.transitions)  # leaves [B, ...]


# ---------------------------------------------------------------------------------------------
# Training: one update = act for num_steps steps, then gradient steps on replayed minibatches.


class EnvCarry(NamedTuple):
    """What one environment carries from step to step."""

    env_state: Any  # gymnax state
    obs: jax.Array
    episode_return: jax.Array  # return of the running episode so far
    episode_length: jax.Array


class EpisodeEnd(NamedTuple):
    """Whether a step ended an episode, and that episode's return and length if it did."""

    done: jax.Array
    episode_return: jax.Array
    episode_length: jax.Array


class Learner(NamedTuple):
    """What the gradient steps change."""

    network: QNetwork
    target_network: QNetwork
    opt_state: Any
    gradient_steps: jax.Array  # taken so far; the target network follows every target_period


class TrainState(NamedTuple):
    learner: Learner
    buffer: ReplayBuffer
    envs: EnvCarry  # leaves [N, ...], one row per environment
    env_steps: jax.Array  # environment steps so far, of all environments together
    key: jax.Array

    @property
    def network(self) -> QNetwork:
        """The online network: what acts, is evaluated and is saved."""
        return self.learner.network


def make_train(args: Args):
    """Returns pure functions for ONE agent: init(key) -> state, train_chunk(state) ->
    (state, metrics) running `updates_per_chunk` updates, and train(key) -> (state, metrics)
    for the whole run. vmap them over keys for several seeds."""
    check_args(args)
    env, env_params = make_env(args)
    obs_shape, num_actions = env.observation_space(env_params).shape, env.action_space(env_params).n
    T, N = args.num_steps, args.num_envs
    # Epsilon as a function of the environment steps taken (CleanRL's linear schedule).
    epsilon_schedule = optax.linear_schedule(args.start_e, args.end_e, args.exploration_steps)
    # flatten: Adam sees one flat vector, a few large operations instead of many small ones.
    optimizer = optax.flatten(optax.adam(args.learning_rate))

    def init(key) -> TrainState:
        network_key, reset_key, key = jax.random.split(key, 3)
        network = QNetwork(network_key, obs_shape, num_actions, args.n_quantiles)
        obs, env_state = jax.vmap(env.reset, (0, None))(jax.random.split(reset_key, N), env_params)
        envs = EnvCarry(env_state=env_state, obs=obs, episode_return=jnp.zeros(N),
                        episode_length=jnp.zeros(N, jnp.int32))
        one = Transition(obs=obs[0], action=jnp.int32(0), reward=jnp.float32(0),
                         terminated=jnp.float32(0), next_obs=obs[0])
        learner = Learner(network=network, target_network=network,
                          opt_state=optimizer.init(network), gradient_steps=jnp.int32(0))
        return TrainState(learner=learner, buffer=buffer_init(one, N, args.buffer_rows),
                          envs=envs, env_steps=jnp.int32(0), key=key)

    def update_step(state: TrainState, _):
        """One update, in outline: collect_rollout into the buffer, then learn or skip_learning."""
        key, rollout_key, learn_key = jax.random.split(state.key, 3)
        epsilon = epsilon_schedule(state.env_steps + N * jnp.arange(T))  # [T]
        (envs, buffer), episode_end = collect_rollout(state.network, state.envs, state.buffer,
                                                      epsilon, rollout_key)
        env_steps = state.env_steps + T * N
        learning = env_steps >= args.learning_starts
        learner, metrics = jax.lax.cond(learning, learn, skip_learning, state.learner, buffer,
                                        learn_key)

        metrics["learning"] = learning
        metrics["epsilon"] = epsilon[-1]
        metrics["episode_count"] = episode_end.done.sum()
        metrics["episode_return_sum"] = (episode_end.episode_return * episode_end.done).sum()
        metrics["episode_length_sum"] = (episode_end.episode_length * episode_end.done).sum()
        return TrainState(learner=learner, buffer=buffer, envs=envs, env_steps=env_steps,
                          key=key), metrics

    def collect_rollout(network: QNetwork, envs: EnvCarry, buffer: ReplayBuffer, epsilon, key):
        """T epsilon-greedy steps of the N environments (epsilon [T]: of each step), each
        step written to the buffer -> ((envs, buffer), episode ends [T, N])."""
        explore_key, action_key, step_key = jax.random.split(key, 3)
        # The rollout's randomness, drawn before the scan.
        explore = jax.random.uniform(explore_key, (T, N)) < epsilon[:, None]
        random_action = jax.random.randint(action_key, (T, N), 0, num_actions)
        step_keys = jax.random.split(step_key, (T, N))
        step_all = jax.vmap(env_step, in_axes=(None, 0, 0, 0, 0))

        def step(carry, xs):
            envs, buffer = carry
            envs, (transition, episode_end) = step_all(network, envs, *xs)
            return (envs, buffer_add(buffer, transition)), episode_end

        return jax.lax.scan(step, (envs, buffer), (explore, random_action, step_keys))

    def env_step(network: QNetwork, carry: EnvCarry, explore, random_action, key):
        """One epsilon-greedy step of one environment. `explore` (a coin of probability
        epsilon) and `random_action` are drawn before the rollout."""
        action = jnp.where(explore, random_action, jnp.argmax(network.q_values(carry.obs)))
        obs, env_state, reward, terminated, truncated, info = env.step(
            key, carry.env_state, action, env_params)
        reward = reward.astype(jnp.float32)
        done = terminated | truncated
        episode_return = carry.episode_return + reward
        episode_length = carry.episode_length + 1
        transition = Transition(obs=carry.obs, action=action, reward=reward,
                                terminated=terminated.astype(jnp.float32),
                                next_obs=info["final_observation"])
        episode_end = EpisodeEnd(done, episode_return, episode_length)  # counted only where done
        carry = EnvCarry(env_state=env_state, obs=obs, episode_return=episode_return * ~done,
                         episode_length=episode_length * ~done)
        return carry, (transition, episode_end)

    def learn(learner: Learner, buffer: ReplayBuffer, key):
        """gradient_steps_per_update gradient steps, each on its own uniform minibatch."""

        def step(learner, key):
            return gradient_step(learner, buffer_sample(buffer, key, args.batch_size))

        learner, metrics = jax.lax.scan(step, learner,
                                        jax.random.split(key, args.gradient_steps_per_update))
        return learner, jax.tree.map(jnp.mean, metrics)

    def skip_learning(learner: Learner, buffer: ReplayBuffer, key):
        """Before learning_starts: the learner as it is, and metrics of the same shape."""
        return learner, {"loss": jnp.float32(0), "q_values": jnp.float32(0)}

    def gradient_step(learner: Learner, batch: Transition):
        """One gradient step on the mean loss of a minibatch [B], then the target update."""

        def batch_loss(network):
            loss, metrics = jax.vmap(q_loss, in_axes=(None, None, 0, None))(
                network, learner.target_network, batch, args)
            return loss.mean(), metrics

        grads, metrics = jax.grad(batch_loss, has_aux=True)(learner.network)
        updates, opt_state = optimizer.update(grads, learner.opt_state)
        network = optax.apply_updates(learner.network, updates)
        gradient_steps = learner.gradient_steps + 1
        # Every target_period steps, target <- tau online + (1 - tau) target (CleanRL).
        target_network = optax.periodic_update(
            optax.incremental_update(network, learner.target_network, args.tau),
            learner.target_network, gradient_steps, args.target_period)
        return Learner(network=network, target_network=target_network, opt_state=opt_state,
                       gradient_steps=gradient_steps), jax.tree.map(jnp.mean, metrics)

    def train_chunk(state: TrainState):
        state, metrics = jax.lax.scan(update_step, state, length=args.updates_per_chunk)
        sums = {k: metrics.pop(k).sum() for k in list(metrics) if k.startswith("episode_")}
        learning = metrics.pop("learning")
        epsilon = metrics.pop("epsilon")[-1]
        # Loss means over the updates that took gradient steps; NaN (not logged) if none did.
        means = {k: jnp.where(learning, v, 0).sum() / learning.sum() for k, v in metrics.items()}
        # A loss that went non-finite in any update of the chunk stays visible.
        means["finite"] = (jnp.isfinite(metrics["loss"]) | ~learning).all()
        return state, {**means, **sums, "epsilon": epsilon}

    def train(key):
        state = init(key)
        return jax.lax.scan(lambda s, _: train_chunk(s), state, length=args.num_chunks)

    return init, train_chunk, train


# ---------------------------------------------------------------------------------------------
# Evaluation: greedy episodes, and one of them rendered.


class EvalCarry(NamedTuple):
    env_state: Any
    obs: jax.Array
    episode_return: jax.Array
    done: jax.Array
    key: jax.Array


def greedy_step(network: QNetwork, carry: EvalCarry, env, env_params) -> EvalCarry:
    """One step of one environment with the greedy action, the argmax of the mean quantile."""
    key, step_key = jax.random.split(carry.key)
    action = jnp.argmax(network.q_values(carry.obs))
    obs, env_state, reward, terminated, truncated, _ = env.step(
        step_key, carry.env_state, action, env_params)
    return EvalCarry(env_state=env_state, obs=obs, episode_return=carry.episode_return + reward,
                     done=terminated | truncated, key=key)


def evaluate(network: QNetwork, key, env, env_params):
    """The return of one episode of the greedy policy. vmap over keys for several: under
    vmap, an episode that has ended keeps its carry while the others run on."""
    reset_key, key = jax.random.split(key)
    obs, env_state = env.reset(reset_key, env_params)
    carry = EvalCarry(env_state=env_state, obs=obs, episode_return=jnp.float32(0),
                      done=jnp.bool_(False), key=key)
    return jax.lax.while_loop(lambda carry: ~carry.done,
                              lambda carry: greedy_step(network, carry, env, env_params),
                              carry).episode_return


VIDEO_MAX_FRAMES = 200  # classic control renders about 5 frames a second


def greedy_episode(network: QNetwork, key, env, env_params, num_steps: int):
    """num_steps greedy steps from a reset, recording what a renderer needs -> (gymnax state
    before each step [num_steps], carry after each step [num_steps])."""
    reset_key, key = jax.random.split(key)
    obs, env_state = env.reset(reset_key, env_params)

    def step(carry: EvalCarry, _):
        next_carry = greedy_step(network, carry, env, env_params)
        return next_carry, (carry.env_state, next_carry)

    carry = EvalCarry(env_state=env_state, obs=obs, episode_return=jnp.float32(0),
                      done=jnp.bool_(False), key=key)
    return jax.lax.scan(step, carry, length=num_steps)[1]


def capture_video(network: QNetwork, key, env, env_params, path: str) -> str:
    """Render one greedy episode (at most VIDEO_MAX_FRAMES steps) to a GIF with gymnax's own
    renderer -> a line saying what was written. Raises ConfigError for an environment that
    gymnax cannot render."""
    # pygame (classic control's renderer) would look for a sound card and a screen otherwise.
    os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    from gymnax.visualize import visualizer  # imports matplotlib: only when asked for

    max_steps = getattr(env_params, "max_steps_in_episode", VIDEO_MAX_FRAMES)
    num_steps = min(VIDEO_MAX_FRAMES, max_steps)
    states, after = jax.jit(
        lambda network, key: greedy_episode(network, key, env, env_params, num_steps))(network, key)
    returns, done = np.asarray(after.episode_return), np.asarray(after.done)
    length = int(np.argmax(done)) + 1 if done.any() else num_steps
    # The renderer wants a list of states; the state after the last step is the next episode's.
    frames = [jax.tree.map(lambda x: x[t], states) for t in range(length)]
    animation = visualizer.Visualizer(env, env_params, frames, returns[:length])
    animation.init()  # draws nothing, and sets no image, for an environment it cannot render
    if not hasattr(animation, "im"):
        visualizer.plt.close(animation.fig)
        raise ConfigError(f"gymnax has no renderer for {env.name}; no episode.gif written")
    animation.animate(path)
    ended = "ended" if done.any() else f"cut at {VIDEO_MAX_FRAMES} frames"
    return f"wrote {path}: {length} steps, return {float(returns[length - 1]):.1f} ({ended})"


# =============================================================================================
# COMMAND LINE. Everything above is the algorithm and its evaluation, enough for
# `jax.jit(jax.vmap(train))(keys)` in your own code; everything below runs it from a shell:
# devices, run folder, compilation, the host loop over chunks, logging, saving.
# =============================================================================================


def over_seeds(fn, num_seeds: int):
    """fn for one seed -> fn for all seeds (a leading seed axis on every input and output):
    jax.vmap, except for a single seed, where fn runs on x[0] and the axis is put back: vmap
    over an axis of size 1 keeps a batch dimension of 1 that XLA's CPU backend runs markedly
    slower (docs/dqn.md)."""
    if num_seeds > 1:
        return jax.vmap(fn)

    def one_seed(*inputs):
        outputs = fn(*jax.tree.map(lambda x: x[0], inputs))
        return jax.tree.map(lambda x: x[None], outputs)

    return one_seed


def seed_sharding(num_seeds: int):
    """Shard the leading (seed) axis over the largest number of devices that divides it."""
    devices = jax.devices()
    num_devices = max(d for d in range(1, len(devices) + 1) if num_seeds % d == 0)
    mesh = jax.sharding.Mesh(np.array(devices[:num_devices]), ("seed",))
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("seed"))


def seed_keys(seed: int, num_seeds: int, eval_episodes: int):
    """The keys of a run, all split from --seed -> (training keys [S], evaluation keys [S, E],
    the key of the --capture-video episode)."""
    train_key, eval_key, video_key = jax.random.split(jax.random.key(seed), 3)
    return (jax.random.split(train_key, num_seeds),
            jax.random.split(eval_key, (num_seeds, eval_episodes)), video_key)


def compile_ahead(lowered: jax.stages.Lowered, runs_once: bool = False) -> jax.stages.Compiled:
    """Compile a lowered (traced) function with this file's compiler options."""
    options = {}
    if jax.default_backend() == "cpu":
        # One thread per device: RL's small matrices lose more to thread hand-offs than they gain.
        options["xla_cpu_multi_thread_eigen"] = False
        # LLVM -O1 runs the training chunk as fast as the default -O3 and compiles it faster
        # (docs/ppo.md); init and evaluation run once, so -O0.
        options["xla_backend_optimization_level"] = 0 if runs_once else 1
    return lowered.compile(options)


def enable_compilation_cache(enabled: bool) -> None:
    """JAX's persistent compilation cache: a rerun of the same configuration loads its
    compiled programs instead of compiling them (figures in docs/dqn.md). The folder is
    $JAX_COMPILATION_CACHE_DIR when set, else ~/.cache/single-file-rl/jax."""
    if not enabled:
        jax.config.update("jax_enable_compilation_cache", False)
        return
    if not jax.config.jax_compilation_cache_dir:
        cache_home = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
        jax.config.update("jax_compilation_cache_dir",
                          os.path.join(cache_home, "single-file-rl", "jax"))
    # Cache every program, also those that compile in under a second (JAX's floor is 1 s).
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)


def compile_training(args: Args, env, env_params, sharding, train_keys, eval_keys):
    """Compile init, the training chunk and evaluation for all seeds, one after another
    -> (initial state, compiled chunk, compiled evaluation)."""
    init, train_chunk, _ = make_train(args)
    init_all = jax.jit(over_seeds(init, args.num_seeds), out_shardings=sharding)
    state = compile_ahead(init_all.lower(train_keys), runs_once=True)(train_keys)
    train_chunk_all = jax.jit(over_seeds(train_chunk, args.num_seeds), in_shardings=sharding,
                              out_shardings=sharding)
    evaluate_all = compile_evaluation(env, env_params, sharding, state.network, eval_keys)
    return state, compile_ahead(train_chunk_all.lower(state)), evaluate_all


def compile_evaluation(env, env_params, sharding, networks, eval_keys) -> jax.stages.Compiled:
    """Evaluation of all seeds: networks [S], keys [S, E] -> returns [S, E]."""
    evaluate_all = jax.vmap(jax.vmap(lambda network, key: evaluate(network, key, env, env_params),
                                     in_axes=(None, 0)))
    return compile_ahead(jax.jit(evaluate_all, in_shardings=sharding, out_shardings=sharding)
                         .lower(networks, eval_keys), runs_once=True)


def load_networks(path: str):
    """Rebuild the networks of all seeds from the args.json beside the model file."""
    args_path = os.path.join(os.path.dirname(path) or ".", "args.json")
    if not os.path.isfile(path):
        raise ConfigError(f"model file not found: {path}")
    if not os.path.isfile(args_path):
        raise ConfigError(f"{args_path} not found; it must lie beside the model file")
    with open(args_path) as f:
        saved = Args(**json.load(f))
    env, env_params = make_env(saved)
    obs_shape, num_actions = env.observation_space(env_params).shape, env.action_space(env_params).n
    like = jax.vmap(lambda key: QNetwork(key, obs_shape, num_actions, saved.n_quantiles))(
        jax.random.split(jax.random.key(0), saved.num_seeds))
    try:
        return saved, eqx.tree_deserialise_leaves(path, like)
    except Exception as error:  # a truncated or foreign file
        raise ConfigError(f"cannot load {path}: it does not match the network that {args_path} "
                          f"describes ({type(error).__name__}: {error})") from None


def resolve_args(args: Args):
    """Check the flags and load --load-model -> (args, loaded networks or None). With
    --eval-only the loaded run's own args describe the network."""
    check_args(args)
    if not args.load_model:
        return args, None
    saved_args, loaded = load_networks(args.load_model)
    if args.eval_only:
        args = dataclasses.replace(saved_args, load_model=args.load_model, eval_only=True,
                                   eval_episodes=args.eval_episodes, seed=args.seed,
                                   log_dir=args.log_dir, track=args.track,
                                   compile_cache=args.compile_cache,
                                   capture_video=args.capture_video, save_model=False)
    elif (saved_args.env, saved_args.num_seeds) != (args.env, args.num_seeds):
        raise ConfigError(f"{args.load_model} holds {saved_args.num_seeds} seeds of "
                          f"{saved_args.env}; pass --env {saved_args.env} "
                          f"--num-seeds {saved_args.num_seeds}")
    return args, loaded


def make_run_dir(args: Args) -> str:
    run_dir = os.path.join(args.log_dir, f"{args.env}__{ALGO}__{args.seed}__{int(time.time())}")
    while os.path.exists(run_dir):  # a run of the same env and seed started in the same second
        run_dir += "_"
    os.makedirs(run_dir)
    with open(os.path.join(run_dir, "args.json"), "w") as f:
        json.dump(dataclasses.asdict(args), f, indent=2)
    return run_dir


LOSS_TAGS = ("loss", "q_values")


def log_chunk(writers, metrics, step: int, sps: float):
    """Per-seed TensorBoard scalars of one chunk; returns the mean episodic return of each
    seed [S], NaN for a seed where no episode ended (it logs no return then). A chunk that
    ended before --learning-starts took no gradient step and logs no loss."""
    count = metrics["episode_count"]
    mean_return = np.where(count > 0, metrics["episode_return_sum"] / np.maximum(count, 1), np.nan)
    mean_length = metrics["episode_length_sum"] / np.maximum(count, 1)
    for seed, writer in enumerate(writers):
        if count[seed] > 0:
            writer.add_scalar("charts/episodic_return", mean_return[seed], step)
            writer.add_scalar("charts/episodic_length", mean_length[seed], step)
        writer.add_scalar("charts/SPS", sps / len(writers), step)
        writer.add_scalar("charts/epsilon", metrics["epsilon"][seed], step)
        for name in LOSS_TAGS:
            if np.isfinite(metrics[name][seed]):
                writer.add_scalar(f"losses/{name}", metrics[name][seed], step)
    return mean_return


class TrainingResult(NamedTuple):
    state: TrainState  # after the last finite chunk
    steps: int  # environment steps per seed
    train_seconds: float  # waiting for chunks, compilation excluded
    train_returns: list  # per seed, the mean return of the last chunk where episodes ended
    error: str | None  # why training stopped early (a non-finite loss), if it did
    interrupted: bool  # stopped by Ctrl-C


def train_chunks(args: Args, state: TrainState, train_chunk_all, writers) -> TrainingResult:
    """The host loop: run the compiled chunks, log and print after each. Stops early at a
    non-finite loss (keeping the state of the last finite chunk) and, on Ctrl-C, at the end of
    the running chunk."""
    steps, train_seconds, error = 0, 0.0, None
    train_returns = [None] * args.num_seeds
    steps_per_chunk = args.updates_per_chunk * args.steps_per_update
    interrupted = []
    previous_handler = signal.signal(signal.SIGINT, lambda *_: interrupted.append(True))
    for _ in range(args.num_chunks):
        chunk_start = time.perf_counter()
        new_state, metrics = train_chunk_all(state)
        metrics = jax.tree.map(np.asarray, metrics)  # waits for the chunk
        train_seconds += time.perf_counter() - chunk_start
        if not metrics["finite"].all():
            seed = int(np.flatnonzero(~metrics["finite"])[0])
            error = (f"non-finite loss between steps {steps} and {steps + steps_per_chunk} "
                     f"in seed {seed}")
            print(f"{ALGO}.py: error: {error}; stopping, keeping the model of the last finite "
                  "chunk", file=sys.stderr)
            break
        state, steps = new_state, steps + steps_per_chunk
        sps = steps * args.num_seeds / train_seconds
        mean_return = log_chunk(writers, metrics, steps, sps)
        train_returns = [r if np.isfinite(r) else old for r, old in zip(mean_return, train_returns)]
        finished = mean_return[np.isfinite(mean_return)]
        returns = f"{finished.mean():8.1f}" if finished.size else "   (no episode ended)"
        if finished.size and args.num_seeds > 1:
            returns += f" ± {finished.std():6.1f}"
        print(f"step {steps:>10,} | SPS {sps:>10,.0f} | return {returns}", flush=True)
        if interrupted:
            print("interrupted: stopping after this chunk", file=sys.stderr)
            break
    signal.signal(signal.SIGINT, previous_handler)
    return TrainingResult(state=state, steps=steps, train_seconds=train_seconds,
                          train_returns=train_returns, error=error, interrupted=bool(interrupted))


def main(args: Args) -> None:
    wall_start = time.perf_counter()
    try:
        args, loaded = resolve_args(args)
        env, env_params = make_env(args)
    except ConfigError as error:
        sys.exit(f"{ALGO}.py: error: {error}")
    enable_compilation_cache(args.compile_cache)

    # Set up: run folder, writers, keys, the sharding of the seed axis over the devices.
    run_dir = make_run_dir(args)
    writers = [SummaryWriter(os.path.join(run_dir, f"seed_{i}")) for i in range(args.num_seeds)
               ] if args.track else []
    sharding = seed_sharding(args.num_seeds)
    train_keys, eval_keys, video_key = seed_keys(args.seed, args.num_seeds, args.eval_episodes)
    train_keys, eval_keys = jax.device_put((train_keys, eval_keys), sharding)
    summary = {"algo": ALGO, "env": args.env, "args": dataclasses.asdict(args), "run_dir": run_dir,
               "devices": sharding.mesh.size}
    num_timesteps = args.num_chunks * args.updates_per_chunk * args.steps_per_update  # per seed
    if num_timesteps != args.total_timesteps and not args.eval_only:
        print(f"note: --total-timesteps {args.total_timesteps:,} runs {num_timesteps:,} steps per "
              f"seed ({args.num_chunks} chunks of {args.updates_per_chunk} updates of "
              f"{args.steps_per_update} steps)")

    # Compile, and train chunk by chunk.
    compile_start = time.perf_counter()
    if args.eval_only:
        network = jax.device_put(loaded, sharding)
        evaluate_all = compile_evaluation(env, env_params, sharding, network, eval_keys)
        compile_seconds = time.perf_counter() - compile_start
        result = TrainingResult(state=None, steps=0, train_seconds=0.0,
                                train_returns=[None] * args.num_seeds, error=None, interrupted=False)
    else:
        state, train_chunk_all, evaluate_all = compile_training(
            args, env, env_params, sharding, train_keys, eval_keys)
        if loaded is not None:
            loaded = jax.device_put(loaded, sharding)  # online and target networks start from it
            state = state._replace(learner=state.learner._replace(network=loaded,
                                                                  target_network=loaded))
        compile_seconds = time.perf_counter() - compile_start
        result = train_chunks(args, state, train_chunk_all, writers)
        network = result.state.network

    # Evaluate: greedy episodes of every seed, and with --capture-video one of them rendered.
    eval_returns = np.asarray(evaluate_all(network, eval_keys)).mean(axis=1)  # [S]
    if args.capture_video:
        try:
            seed_0 = jax.tree.map(lambda x: x[0], network)
            print(capture_video(seed_0, video_key, env, env_params,
                                os.path.join(run_dir, "episode.gif")))
        except ConfigError as error:
            print(f"{ALGO}.py: --capture-video: {error}", file=sys.stderr)

    # Save: events, model, summary.
    sps = result.steps * args.num_seeds / result.train_seconds if result.steps else 0.0
    summary.update(eval_returns=eval_returns.tolist(), train_returns=result.train_returns,
                   steps=result.steps, sps=sps, compile_seconds=compile_seconds,
                   interrupted=result.interrupted, wall_seconds=time.perf_counter() - wall_start)
    if result.error:
        summary["error"] = result.error
    for writer, eval_return in zip(writers, eval_returns):
        writer.add_scalar("eval/episodic_return", eval_return, result.steps)
        writer.close()
    if args.save_model:
        eqx.tree_serialise_leaves(os.path.join(run_dir, "model.eqx"), network)
    with open(os.path.join(run_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    spread = f" ± {eval_returns.std():.1f}" if args.num_seeds > 1 else ""
    seeds = f" x {args.num_seeds} seeds" if args.num_seeds > 1 else ""
    print(f"eval return {eval_returns.mean():.1f}{spread} ({args.eval_episodes} greedy episodes"
          f"{seeds}) | SPS {sps:,.0f} | compile {compile_seconds:.1f} s | "
          f"wall {summary['wall_seconds']:.1f} s | {run_dir}")
    sys.exit(1 if result.error else 130 if result.interrupted else 0)


if __name__ == "__main__":
    gc.freeze()
    gc.enable()
    main(tyro.cli(Args))
