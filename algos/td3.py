"""Twin Delayed Deep Deterministic policy gradient (TD3), for continuous actions.

TD3 (Fujimoto et al. 2018, https://arxiv.org/abs/1802.09477) learns a deterministic policy
mu(s) by following the gradient of a learned action value Q(s, mu(s)) (DDPG), with three
changes that keep the action values from overestimating: two critics, whose smaller value
makes the target r + gamma min_i Q'_i(s', a'); target-policy smoothing, a' = mu'(s') plus
clipped Gaussian noise; and delayed updates, one actor and target-network step every
`policy_frequency` critic steps. Targets follow the online networks by Polyak averaging
(`tau`). Transitions come from `num_envs` parallel environments acting with Gaussian
exploration noise, independent at each step or correlated in time (an Ornstein-Uhlenbeck
process, `noise_correlation`), with uniform random actions before `learning_starts`, and go
into a replay buffer, from which minibatches are sampled uniformly. The networks act in
[-1, 1] per dimension and the file maps actions linearly onto the environment's bounds, so
every noise is in units of half the action range. Everything, the environments and the buffer included,
runs inside one jitted `lax.scan`; `--num-seeds N` trains N agents at once. The defaults are
CleanRL's td3_continuous_action except where docs/td3.md says why.
Implementation details, measured returns and speed: docs/td3.md.

Usage:
    python algos/td3.py --env Pendulum-v1
    python algos/td3.py --env MountainCarContinuous-v0 --num-seeds 8 --total-timesteps 150000 \\
        --noise-correlation 0.99 --exploration-noise 0.9 --num-envs 4 --train-frequency 4
    python algos/td3.py --load-model runs/<run>/model.eqx --eval-only --capture-video
    python algos/td3.py --help

Environments: any gymnax id with a continuous (Box) action space (Pendulum-v1,
MountainCarContinuous-v0, Reacher-misc, PointRobot-misc, ...), including ids added with
`gymnax.register`. Observations are flattened into 256-256 ReLU MLPs.

From your own code:
    init, train_chunk, train = make_train(Args(env="Pendulum-v1"))
    state, metrics = jax.jit(jax.vmap(train))(jax.random.split(jax.random.key(0), 8))

Reading guide, top to bottom:
    Args             the flags and their defaults
    ActorCritic      the networks: a deterministic actor and twin critics
    critic_loss      the critics' loss of one transition; actor_loss the actor's of one state
    ReplayBuffer     the replay buffer: buffer_init, buffer_add, buffer_sample
    make_train       one update's outline (update_step), then its stages in order:
                     collect_rollout with env_step, learn/skip_learning with gradient_step
    evaluate         evaluation episodes with the deterministic action; capture_video
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

ALGO = "td3"


@dataclasses.dataclass(frozen=True)
class Args:
    env: str = "Pendulum-v1"
    """gymnax environment id (continuous actions)"""
    seed: int = 0
    """seed of the run; the seeds of its agents are derived from it"""
    num_seeds: int = 1
    """number of independent agents trained at once (vmapped, sharded over devices)"""
    total_timesteps: int = 20_000
    """environment steps per agent"""
    num_envs: int = 1
    """parallel environments per agent"""
    num_steps: int = 1
    """steps per environment between two rounds of gradient steps"""
    learning_rate: float = 1e-3
    """Adam learning rate of the actor and the critics"""
    buffer_size: int = 1_000_000
    """replay buffer capacity in transitions (rounded down to a multiple of --num-envs)"""
    gamma: float = 0.99
    """discount factor"""
    tau: float = 0.005
    """target network update rate: target <- tau online + (1 - tau) target, at every actor step"""
    batch_size: int = 256
    """transitions sampled from the buffer for each gradient step"""
    policy_noise: float = 0.2
    """standard deviation of the target-policy smoothing noise (in units of half the action
    range)"""
    noise_clip: float = 0.5
    """the smoothing noise is clipped to [-noise_clip, noise_clip]"""
    exploration_noise: float = 0.1
    """standard deviation of the Gaussian exploration noise (in units of half the action range)"""
    noise_correlation: float = 0.0
    """correlation of one environment's exploration noise between consecutive steps, in [0, 1):
    an Ornstein-Uhlenbeck process (AR(1)) restarted at 0 at every episode start, its std tending
    to --exploration-noise; 0 is independent Gaussian noise at every step"""
    policy_frequency: int = 2
    """critic steps per actor and target-network step (the delay)"""
    learning_starts: int = 1_000
    """environment steps of uniform random actions before the first gradient step"""
    train_frequency: int = 1
    """environment steps (of all --num-envs together) per critic gradient step: the replay
    ratio is 1 / train_frequency gradient steps per environment step"""
    num_chunks: int = 10
    """compiled chunks the run is split into; a progress line and log point after each"""
    eval_episodes: int = 10
    """evaluation episodes (deterministic actions) per agent at the end"""
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
    """after training, render one episode of seed 0 to episode.gif in the run folder
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


class ConfigError(ValueError):
    """Bad input that main reports as a one-line message."""


def check_args(args: Args) -> None:
    positive = ["num_seeds", "total_timesteps", "num_envs", "num_steps", "buffer_size",
                "batch_size", "train_frequency", "policy_frequency", "num_chunks",
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
    if not 0 < args.tau <= 1:
        raise ConfigError(f"--tau must lie in (0, 1], got {args.tau}")
    for name in ["policy_noise", "noise_clip", "exploration_noise"]:
        if not getattr(args, name) >= 0:
            raise ConfigError(f"--{name.replace('_', '-')} must not be negative, "
                              f"got {getattr(args, name)}")
    if not 0 <= args.noise_correlation < 1:
        raise ConfigError(f"--noise-correlation must lie in [0, 1), got {args.noise_correlation}")
    if args.eval_only and args.load_model is None:
        raise ConfigError("--eval-only needs --load-model PATH")


DISCRETE_FILES = "ppo.py, a2c.py, dqn.py, c51.py, qr_dqn.py, pqn.py"


def has_continuous_actions(env_id: str) -> bool:
    """Whether a registered gymnax id builds, with a continuous (Box) action space."""
    try:
        env, env_params = gymnax.make(env_id)
        return not hasattr(env.action_space(env_params), "n")
    except Exception:  # an id that fails to build is not offered
        return False


def make_env(args: Args):
    if args.env not in gymnax.registered_envs:
        raise ConfigError(f"unknown environment '{args.env}'. Valid ids (continuous actions): "
                          + ", ".join(filter(has_continuous_actions, gymnax.registered_envs)))
    env, env_params = gymnax.make(args.env)
    if hasattr(env.action_space(env_params), "n"):
        raise ConfigError(f"{args.env} has a discrete action space; {ALGO}.py handles continuous "
                          f"actions only (for discrete actions: {DISCRETE_FILES})")
    return env, env_params


def action_bounds(env, env_params):
    """The environment's action bounds -> (low [A], high [A]) as float32."""
    space = env.action_space(env_params)
    return (jnp.broadcast_to(jnp.asarray(space.low, jnp.float32), space.shape),
            jnp.broadcast_to(jnp.asarray(space.high, jnp.float32), space.shape))


def to_env_action(action, low, high):
    """An action of the networks, in [-1, 1], mapped linearly onto [low, high] (clipped)."""
    return low + (jnp.clip(action, -1.0, 1.0) + 1.0) * 0.5 * (high - low)


# ---------------------------------------------------------------------------------------------
# Networks: a deterministic actor and twin critics Q(s, a), each a 256-256 ReLU MLP (CleanRL's).


def lecun_linear(key, in_features: int, out_features: int) -> eqx.nn.Linear:
    """A Linear layer with LeCun-normal weights (variance 1 / in_features) and zero biases:
    flax's default, so rejax's and PureJaxRL's."""
    # Shapes only: eval_shape builds the layer without running its default random init.
    layer = eqx.filter_eval_shape(eqx.nn.Linear, in_features, out_features, key=jax.random.key(0))
    weight = jax.nn.initializers.lecun_normal(in_axis=1, out_axis=0)(key, (out_features, in_features))
    return eqx.tree_at(lambda l: (l.weight, l.bias), layer, (weight, jnp.zeros(out_features)))


class MLP(eqx.Module):
    """256-256 ReLU layers and a linear output layer."""

    layers: tuple[eqx.nn.Linear, ...]

    def __init__(self, key, in_features: int, out_features: int):
        keys = jax.random.split(key, 3)
        self.layers = (lecun_linear(keys[0], in_features, 256), lecun_linear(keys[1], 256, 256),
                       lecun_linear(keys[2], 256, out_features))

    def __call__(self, x):
        for layer in self.layers[:-1]:
            x = jax.nn.relu(layer(x))
        return self.layers[-1](x)


class Actor(eqx.Module):
    """The deterministic policy mu(s) in [-1, 1] per dimension (a tanh output)."""

    mlp: MLP

    def __init__(self, key, obs_shape: tuple[int, ...], action_dim: int):
        self.mlp = MLP(key, math.prod(obs_shape), action_dim)

    def __call__(self, obs):
        """One observation -> action [A] in [-1, 1]."""
        return jnp.tanh(self.mlp(obs.astype(jnp.float32).ravel()))


class Critic(eqx.Module):
    """An action value Q(s, a) of an observation and an action in [-1, 1]."""

    mlp: MLP

    def __init__(self, key, obs_shape: tuple[int, ...], action_dim: int):
        self.mlp = MLP(key, math.prod(obs_shape) + action_dim, 1)

    def __call__(self, obs, action):
        return self.mlp(jnp.concatenate([obs.astype(jnp.float32).ravel(), action]))[0]


class ActorCritic(eqx.Module):
    """Arrays only, so it is a scan carry, a `jax.grad` argument and an `optax.init` target.
    The twin critics are one Critic whose arrays have a leading axis of 2."""

    actor: Actor
    critics: Critic  # leaves [2, ...]

    def __init__(self, key, obs_shape: tuple[int, ...], action_dim: int):
        actor_key, critic_key = jax.random.split(key)
        self.actor = Actor(actor_key, obs_shape, action_dim)
        self.critics = jax.vmap(lambda key: Critic(key, obs_shape, action_dim))(
            jax.random.split(critic_key, 2))

    def q_values(self, obs, action):
        """Both critics' values of one observation and action -> [2]."""
        return jax.vmap(lambda critic: critic(obs, action))(self.critics)


# ---------------------------------------------------------------------------------------------
# Losses of one transition; the minibatch losses are their means (vmapped in gradient_step).


class Transition(NamedTuple):
    """What the replay buffer stores of one environment step."""

    obs: jax.Array
    action: jax.Array  # [A], in [-1, 1]: the networks' units
    reward: jax.Array
    terminated: jax.Array  # only termination stops bootstrapping; a time limit does not
    next_obs: jax.Array  # the observation the step reached, before any auto-reset


def smoothed_target_action(target_actor: Actor, next_obs, key, args: Args):
    """a' = mu'(s') plus Gaussian noise clipped to [-noise_clip, noise_clip], then clipped to
    the action bounds [-1, 1] (target-policy smoothing)."""
    action = target_actor(next_obs)
    noise = jnp.clip(args.policy_noise * jax.random.normal(key, action.shape),
                     -args.noise_clip, args.noise_clip)
    return jnp.clip(action + noise, -1.0, 1.0)


def critic_loss(critics: Critic, target_network: ActorCritic, transition: Transition,
                target_action, args: Args):
    """Both critics regress onto r + gamma (1 - terminated) min_i Q'_i(s', a') -> (loss,
    metrics). `critics` is the argument of the gradient; the target networks are not."""
    q_tm1 = jax.vmap(lambda critic: critic(transition.obs, transition.action))(critics)  # [2]
    q_t = target_network.q_values(transition.next_obs, target_action).min()
    discount_t = args.gamma * (1.0 - transition.terminated)
    # rlax.td_learning: target r + discount v_t (gradient stopped) minus v_tm1, per critic
    td_error = jax.vmap(rlax.td_learning, in_axes=(0, None, None, None))(
        q_tm1, transition.reward, discount_t, q_t)
    qf_loss = td_error**2  # [2], CleanRL's mean squared error of each critic
    return qf_loss.sum(), {"qf_loss": qf_loss.sum(), "qf1_loss": qf_loss[0], "qf2_loss": qf_loss[1],
                           "qf1_values": q_tm1[0], "qf2_values": q_tm1[1]}


def actor_loss(actor: Actor, critics: Critic, obs):
    """-Q_1(s, mu(s)): the deterministic policy gradient through the first critic."""
    first_critic = jax.tree.map(lambda x: x[0], critics)
    return -first_critic(obs, actor(obs))


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
    rows = buffer.transitions.obs.shape[1]
    # One index into the rows flattened to [N C]: indexing [env, row] under vmap over seeds
    # copied the whole buffer at each gradient step (docs/td3.md, "Sampling the buffer").
    return jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:])[env * rows + row],
                        buffer.transitions)  # leaves [B, ...]


# ---------------------------------------------------------------------------------------------
# Training: one update = act for num_steps steps, then gradient steps on replayed minibatches.


class EnvCarry(NamedTuple):
    """What one environment carries from step to step."""

    env_state: Any  # gymnax state
    obs: jax.Array
    episode_return: jax.Array  # return of the running episode so far
    episode_length: jax.Array
    noise: jax.Array  # [A], the last step's exploration noise (0 at an episode start)


class EpisodeEnd(NamedTuple):
    """Whether a step ended an episode, and that episode's return and length if it did."""

    done: jax.Array
    episode_return: jax.Array
    episode_length: jax.Array


class Learner(NamedTuple):
    """What the gradient steps change."""

    network: ActorCritic
    target_network: ActorCritic
    actor_opt_state: Any
    critic_opt_state: Any
    gradient_steps: jax.Array  # critic steps so far; the actor and targets follow every
    # policy_frequency of them


class TrainState(NamedTuple):
    learner: Learner
    buffer: ReplayBuffer
    envs: EnvCarry  # leaves [N, ...], one row per environment
    env_steps: jax.Array  # environment steps so far, of all environments together
    key: jax.Array

    @property
    def network(self) -> ActorCritic:
        """The online networks: what acts, is evaluated and is saved."""
        return self.learner.network


def make_train(args: Args):
    """Returns pure functions for ONE agent: init(key) -> state, train_chunk(state) ->
    (state, metrics) running `updates_per_chunk` updates, and train(key) -> (state, metrics)
    for the whole run. vmap them over keys for several seeds."""
    check_args(args)
    env, env_params = make_env(args)
    obs_shape = env.observation_space(env_params).shape
    low, high = action_bounds(env, env_params)
    action_dim = low.shape[0]
    T, N = args.num_steps, args.num_envs
    # flatten: Adam sees one flat vector, a few large operations instead of many small ones.
    optimizer = optax.flatten(optax.adam(args.learning_rate))

    def init(key) -> TrainState:
        network_key, reset_key, key = jax.random.split(key, 3)
        network = ActorCritic(network_key, obs_shape, action_dim)
        obs, env_state = jax.vmap(env.reset, (0, None))(jax.random.split(reset_key, N), env_params)
        envs = EnvCarry(env_state=env_state, obs=obs, episode_return=jnp.zeros(N),
                        episode_length=jnp.zeros(N, jnp.int32), noise=jnp.zeros((N, action_dim)))
        one = Transition(obs=obs[0], action=jnp.zeros(action_dim), reward=jnp.float32(0),
                         terminated=jnp.float32(0), next_obs=obs[0])
        learner = Learner(network=network, target_network=network,
                          actor_opt_state=optimizer.init(network.actor),
                          critic_opt_state=optimizer.init(network.critics),
                          gradient_steps=jnp.int32(0))
        return TrainState(learner=learner, buffer=buffer_init(one, N, args.buffer_rows),
                          envs=envs, env_steps=jnp.int32(0), key=key)

    def update_step(state: TrainState, _):
        """One update, in outline: collect_rollout into the buffer, then learn or skip_learning."""
        key, rollout_key, learn_key = jax.random.split(state.key, 3)
        # Uniform random actions until learning_starts, for each of the T steps.
        random_phase = state.env_steps + N * jnp.arange(T) < args.learning_starts  # [T]
        (envs, buffer), episode_end = collect_rollout(state.network.actor, state.envs,
                                                      state.buffer, random_phase, rollout_key)
        env_steps = state.env_steps + T * N
        learning = env_steps >= args.learning_starts
        learner, metrics = jax.lax.cond(learning, learn, skip_learning, state.learner, buffer,
                                        learn_key)

        metrics["learning"] = learning
        metrics["episode_count"] = episode_end.done.sum()
        metrics["episode_return_sum"] = (episode_end.episode_return * episode_end.done).sum()
        metrics["episode_length_sum"] = (episode_end.episode_length * episode_end.done).sum()
        return TrainState(learner=learner, buffer=buffer, envs=envs, env_steps=env_steps,
                          key=key), metrics

    def collect_rollout(actor: Actor, envs: EnvCarry, buffer: ReplayBuffer, random_phase, key):
        """T steps of the N environments (random_phase [T]: whether a step acts at random),
        each step written to the buffer -> ((envs, buffer), episode ends [T, N])."""
        noise_key, random_key, step_key = jax.random.split(key, 3)
        # The rollout's randomness, drawn before the scan.
        white_noise = args.exploration_noise * jax.random.normal(noise_key, (T, N, action_dim))
        random_action = jax.random.uniform(random_key, (T, N, action_dim), minval=-1.0, maxval=1.0)
        step_keys = jax.random.split(step_key, (T, N))
        step_all = jax.vmap(env_step, in_axes=(None, 0, None, 0, 0, 0))

        def step(carry, xs):
            envs, buffer = carry
            envs, (transition, episode_end) = step_all(actor, envs, *xs)
            return (envs, buffer_add(buffer, transition)), episode_end

        return jax.lax.scan(step, (envs, buffer), (random_phase, white_noise, random_action,
                                                   step_keys))

    def env_step(actor: Actor, carry: EnvCarry, random_phase, white_noise, random_action, key):
        """One step of one environment: mu(s) plus exploration noise, clipped to [-1, 1], or
        before learning_starts a uniform random action. The white noise N(0, exploration_noise)
        [A] and the random action are drawn before the rollout."""
        # AR(1), rho x + sqrt(1 - rho^2) white: the same std in the long run. rho = 0 keeps
        # the program of independent noise as it was (bit for bit: docs/td3.md's returns).
        rho = args.noise_correlation
        noise = (white_noise if rho == 0
                 else rho * carry.noise + math.sqrt(1 - rho**2) * white_noise)
        explore = jnp.clip(actor(carry.obs) + noise, -1, 1)
        action = jnp.where(random_phase, random_action, explore)
        obs, env_state, reward, terminated, truncated, info = env.step(
            key, carry.env_state, to_env_action(action, low, high), env_params)
        reward = reward.astype(jnp.float32)
        done = terminated | truncated
        episode_return = carry.episode_return + reward
        episode_length = carry.episode_length + 1
        transition = Transition(obs=carry.obs, action=action, reward=reward,
                                terminated=terminated.astype(jnp.float32),
                                next_obs=info["final_observation"])
        episode_end = EpisodeEnd(done, episode_return, episode_length)  # counted only where done
        carry = EnvCarry(env_state=env_state, obs=obs, episode_return=episode_return * ~done,
                         episode_length=episode_length * ~done, noise=noise * ~done)
        return carry, (transition, episode_end)

    def learn(learner: Learner, buffer: ReplayBuffer, key):
        """gradient_steps_per_update gradient steps, each on its own uniform minibatch ->
        (learner, metrics: critic means, and the actor loss summed with its step count)."""

        def step(learner, key):
            sample_key, noise_key = jax.random.split(key)
            return gradient_step(learner, buffer_sample(buffer, sample_key, args.batch_size),
                                 noise_key)

        learner, metrics = jax.lax.scan(step, learner,
                                        jax.random.split(key, args.gradient_steps_per_update))
        actor_steps = metrics.pop("actor_step")
        actor_loss_sum = (metrics.pop("actor_loss") * actor_steps).sum()
        return learner, {**jax.tree.map(jnp.mean, metrics), "actor_loss_sum": actor_loss_sum,
                         "actor_steps": actor_steps.sum()}

    def skip_learning(learner: Learner, buffer: ReplayBuffer, key):
        """Before learning_starts: the learner as it is, and metrics of the same shape."""
        zero = jnp.float32(0)
        return learner, {"qf_loss": zero, "qf1_loss": zero, "qf2_loss": zero, "qf1_values": zero,
                         "qf2_values": zero, "actor_loss_sum": zero, "actor_steps": jnp.int32(0)}

    def gradient_step(learner: Learner, batch: Transition, key):
        """One critic step on a minibatch [B]; every policy_frequency-th also one actor step
        and the Polyak update of both target networks."""
        target_actions = jax.vmap(smoothed_target_action, in_axes=(None, 0, 0, None))(
            learner.target_network.actor, batch.next_obs, jax.random.split(key, args.batch_size),
            args)

        def batch_critic_loss(critics):
            loss, metrics = jax.vmap(critic_loss, in_axes=(None, None, 0, 0, None))(
                critics, learner.target_network, batch, target_actions, args)
            return loss.mean(), metrics

        network = learner.network
        grads, metrics = jax.grad(batch_critic_loss, has_aux=True)(network.critics)
        updates, critic_opt_state = optimizer.update(grads, learner.critic_opt_state)
        network = eqx.tree_at(lambda n: n.critics, network,
                              optax.apply_updates(network.critics, updates))
        gradient_steps = learner.gradient_steps + 1
        learner = learner._replace(network=network, critic_opt_state=critic_opt_state,
                                   gradient_steps=gradient_steps)
        actor_step = gradient_steps % args.policy_frequency == 0
        learner, loss = jax.lax.cond(actor_step, update_actor, skip_actor, learner, batch.obs)
        return learner, {**jax.tree.map(jnp.mean, metrics), "actor_loss": loss,
                         "actor_step": actor_step}

    def update_actor(learner: Learner, obs):
        """One actor step on the observations of a minibatch [B], then the targets move
        tau of the way to the online networks -> (learner, actor loss)."""
        network = learner.network

        def batch_actor_loss(actor):
            return jax.vmap(actor_loss, in_axes=(None, None, 0))(actor, network.critics, obs).mean()

        loss, grads = jax.value_and_grad(batch_actor_loss)(network.actor)
        updates, actor_opt_state = optimizer.update(grads, learner.actor_opt_state)
        actor = optax.apply_updates(network.actor, updates)
        network = eqx.tree_at(lambda n: n.actor, network, actor)
        target_network = optax.incremental_update(network, learner.target_network, args.tau)
        return learner._replace(network=network, target_network=target_network,
                                actor_opt_state=actor_opt_state), loss

    def skip_actor(learner: Learner, obs):
        """Between actor steps: the learner as it is, and a loss of the same shape."""
        return learner, jnp.float32(0)

    def train_chunk(state: TrainState):
        state, metrics = jax.lax.scan(update_step, state, length=args.updates_per_chunk)
        sums = {k: metrics.pop(k).sum() for k in list(metrics) if k.startswith("episode_")}
        learning = metrics.pop("learning")
        actor_steps = metrics.pop("actor_steps").sum()
        # NaN (not logged) if the actor took no step in the chunk
        actor_loss = metrics.pop("actor_loss_sum").sum() / actor_steps
        # Loss means over the updates that took gradient steps; NaN (not logged) if none did.
        means = {k: jnp.where(learning, v, 0).sum() / learning.sum() for k, v in metrics.items()}
        # A loss that went non-finite in any update of the chunk stays visible.
        means["finite"] = (jnp.isfinite(metrics["qf_loss"]) | ~learning).all() & (
            jnp.isfinite(actor_loss) | (actor_steps == 0))
        return state, {**means, **sums, "actor_loss": actor_loss}

    def train(key):
        state = init(key)
        return jax.lax.scan(lambda s, _: train_chunk(s), state, length=args.num_chunks)

    return init, train_chunk, train


# ---------------------------------------------------------------------------------------------
# Evaluation: episodes with the deterministic action, and one of them rendered.


class EvalCarry(NamedTuple):
    env_state: Any
    obs: jax.Array
    episode_return: jax.Array
    done: jax.Array
    key: jax.Array


def greedy_step(network: ActorCritic, carry: EvalCarry, env, env_params) -> EvalCarry:
    """One step of one environment with the actor's action mu(s), without noise."""
    key, step_key = jax.random.split(carry.key)
    action = to_env_action(network.actor(carry.obs), *action_bounds(env, env_params))
    obs, env_state, reward, terminated, truncated, _ = env.step(
        step_key, carry.env_state, action, env_params)
    return EvalCarry(env_state=env_state, obs=obs, episode_return=carry.episode_return + reward,
                     done=terminated | truncated, key=key)


def evaluate(network: ActorCritic, key, env, env_params):
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


def greedy_episode(network: ActorCritic, key, env, env_params, num_steps: int):
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


def capture_video(network: ActorCritic, key, env, env_params, path: str) -> str:
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
    obs_shape = env.observation_space(env_params).shape
    action_dim = action_bounds(env, env_params)[0].shape[0]
    like = jax.vmap(lambda key: ActorCritic(key, obs_shape, action_dim))(
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


LOSS_TAGS = ("qf_loss", "qf1_loss", "qf2_loss", "qf1_values", "qf2_values", "actor_loss")


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
