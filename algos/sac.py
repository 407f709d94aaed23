"""Soft Actor-Critic (SAC) with automatic temperature tuning, for continuous actions.

SAC (Haarnoja et al. 2018, https://arxiv.org/abs/1801.01290 and, with the temperature tuned,
https://arxiv.org/abs/1812.05905) learns a stochastic policy that maximises the return plus
alpha times its entropy. Two critics regress onto r + gamma (min_i Q'_i(s', a') - alpha
log pi(a'|s')), a' drawn from the current policy, with target critics that follow by Polyak
averaging (`tau`); the policy, a tanh-squashed Gaussian, minimises alpha log pi(a|s) -
min_i Q_i(s, a) through the reparameterised sample; the temperature alpha moves so that the
policy's entropy approaches the target -|A|. Transitions come from `num_envs` parallel
environments acting with samples of the policy, independent at each step or correlated in
time (`noise_correlation`: an Ornstein-Uhlenbeck process for the sample's standard normal),
with uniform random actions before `learning_starts`, and go into a replay buffer, from which
minibatches are sampled uniformly.
The networks act in [-1, 1] per dimension and the file maps actions linearly onto the
environment's bounds; log pi includes the tanh's and that map's change of variables.
Everything, the environments and the buffer included, runs inside one jitted `lax.scan`;
`--num-seeds N` trains N agents at once. The defaults are CleanRL's sac_continuous_action
except where docs/sac.md says why.
Implementation details, measured returns and speed: docs/sac.md.

Usage:
    python algos/sac.py --env Pendulum-v1
    python algos/sac.py --env MountainCarContinuous-v0 --num-seeds 8 --total-timesteps 50000 \\
        --noise-correlation 0.99 --num-envs 4 --train-frequency 4
    python algos/sac.py --load-model runs/<run>/model.eqx --eval-only --capture-video
    python algos/sac.py --help

Environments: any gymnax id with a continuous (Box) action space (Pendulum-v1,
MountainCarContinuous-v0, Reacher-misc, PointRobot-misc, ...), including ids added with
`gymnax.register`. Observations are flattened into 256-256 ReLU MLPs.

From your own code:
    init, train_chunk, train = make_train(Args(env="Pendulum-v1"))
    state, metrics = jax.jit(jax.vmap(train))(jax.random.split(jax.random.key(0), 8))

Reading guide, top to bottom:
    Args             the flags and their defaults
    ActorCritic      the networks: a tanh-squashed Gaussian actor and twin critics
    sample_action    an action and its log-probability, with the changes of variables
                     (reparameterised_action: the same from a given standard normal)
    critic_loss      the critics' loss of one transition; actor_loss, alpha_loss
    ReplayBuffer     the replay buffer: buffer_init, buffer_add, buffer_sample
    make_train       one update's outline (update_step), then its stages in order:
                     collect_rollout with env_step, learn/skip_learning with gradient_step
    evaluate         evaluation episodes with the mean action; capture_video
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

ALGO = "sac"


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
    """Adam learning rate of the actor, the critics and the temperature"""
    buffer_size: int = 1_000_000
    """replay buffer capacity in transitions (rounded down to a multiple of --num-envs)"""
    gamma: float = 0.99
    """discount factor"""
    tau: float = 0.005
    """target critics' update rate: target <- tau online + (1 - tau) target, at every gradient
    step"""
    batch_size: int = 256
    """transitions sampled from the buffer for each gradient step"""
    autotune: bool = True
    """tune the temperature alpha towards the target entropy -|A| (it starts at 1)"""
    alpha: float = 0.2
    """the temperature with --no-autotune"""
    noise_correlation: float = 0.0
    """correlation of one environment's sampling noise between consecutive steps when acting, in
    [0, 1): the standard normal of the policy's sample becomes an Ornstein-Uhlenbeck process
    (AR(1), std 1 in the long run), restarted at 0 at every episode start; 0 is SAC's
    independent sample at every step. The losses always sample independently"""
    learning_starts: int = 1_000
    """environment steps of uniform random actions before the first gradient step"""
    train_frequency: int = 1
    """environment steps (of all --num-envs together) per gradient step: the replay ratio is
    1 / train_frequency gradient steps per environment step"""
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
                "batch_size", "train_frequency", "num_chunks",
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
    if not args.alpha > 0:
        raise ConfigError(f"--alpha must be positive, got {args.alpha}")
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
# Networks: a Gaussian actor and twin critics Q(s, a), each a 256-256 ReLU MLP (CleanRL's).


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


LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0  # CleanRL's bounds of the policy's log standard deviation


class Actor(eqx.Module):
    """A Gaussian over pre-squash actions u; the action is tanh(u), in [-1, 1] per dimension."""

    mlp: MLP

    def __init__(self, key, obs_shape: tuple[int, ...], action_dim: int):
        self.mlp = MLP(key, math.prod(obs_shape), 2 * action_dim)

    def __call__(self, obs):
        """One observation -> (mean [A], log_std [A]) of u."""
        mean, log_std = jnp.split(self.mlp(obs.astype(jnp.float32).ravel()), 2)
        # tanh then an affine map onto [LOG_STD_MIN, LOG_STD_MAX], smooth at the bounds (CleanRL)
        log_std = LOG_STD_MIN + 0.5 * (LOG_STD_MAX - LOG_STD_MIN) * (jnp.tanh(log_std) + 1)
        return mean, log_std


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



# ---------------------------------------------------------------------------------------------
# Losses of one transition; the minibatch losses are their means (vmapped in gradient_step).


class Transition(NamedTuple):
    """What the replay buffer stores of one environment step."""

    obs: jax.Array
    action: jax.Array  # [A], in [-1, 1]: the networks' units
    reward: jax.Array
    terminated: jax.Array  # only termination stops bootstrapping; a time limit does not
    next_obs: jax.Array  # the observation the step reached, before any auto-reset


def gaussian_log_prob(u, mean, log_std):
    """log N(u; mean, exp(log_std)^2), summed over the action's dimensions."""
    z = (u - mean) * jnp.exp(-log_std)
    return jnp.sum(-0.5 * z**2 - log_std - 0.5 * jnp.log(2 * jnp.pi))


def sample_action(actor: Actor, obs, key, action_scale):
    """A reparameterised sample a = tanh(u), u ~ N(mean, std^2) -> (a [A] in [-1, 1],
    log pi(a|s) []), from a standard normal drawn with `key`."""
    return reparameterised_action(actor, obs, jax.random.normal(key, action_scale.shape),
                                  action_scale)


def reparameterised_action(actor: Actor, obs, noise, action_scale):
    """The action of a standard normal `noise` [A]: a = tanh(u), u = mean + std noise -> (a [A]
    in [-1, 1], log pi(a|s) []). The log-probability is that of the action the environment
    receives, low + (a + 1) action_scale: the Gaussian's, minus log |da/du| = log(1 - a^2) of
    the tanh and log(action_scale) of the map onto the bounds, per dimension (as CleanRL's)."""
    mean, log_std = actor(obs)
    u = mean + jnp.exp(log_std) * noise
    action = jnp.tanh(u)
    log_prob = gaussian_log_prob(u, mean, log_std) - jnp.sum(
        jnp.log(action_scale * (1 - action**2) + 1e-6))
    return action, log_prob


def critic_loss(critics: Critic, target_critics: Critic, transition: Transition, next_action,
                next_log_prob, alpha, args: Args):
    """Both critics regress onto r + gamma (1 - terminated) (min_i Q'_i(s', a') - alpha
    log pi(a'|s')), a' ~ pi(.|s') -> (loss, metrics). `critics` is the argument of the
    gradient; the target critics are not."""
    q_tm1 = jax.vmap(lambda critic: critic(transition.obs, transition.action))(critics)  # [2]
    q_next = jax.vmap(lambda critic: critic(transition.next_obs, next_action))(target_critics)
    v_t = q_next.min() - alpha * next_log_prob  # the soft value of s'
    discount_t = args.gamma * (1.0 - transition.terminated)
    # rlax.td_learning: target r + discount v_t (gradient stopped) minus v_tm1, per critic
    td_error = jax.vmap(rlax.td_learning, in_axes=(0, None, None, None))(
        q_tm1, transition.reward, discount_t, v_t)
    qf_loss = td_error**2  # [2], CleanRL's mean squared error of each critic
    return qf_loss.sum(), {"qf_loss": qf_loss.sum(), "qf1_loss": qf_loss[0],
                           "qf2_loss": qf_loss[1], "qf1_values": q_tm1[0], "qf2_values": q_tm1[1]}


def actor_loss(actor: Actor, critics: Critic, obs, key, alpha, action_scale):
    """alpha log pi(a|s) - min_i Q_i(s, a), a ~ pi(.|s) reparameterised -> (loss, log pi)."""
    action, log_prob = sample_action(actor, obs, key, action_scale)
    q = jax.vmap(lambda critic: critic(obs, action))(critics)
    return alpha * log_prob - q.min(), log_prob


def alpha_loss(log_alpha, log_prob, target_entropy):
    """-alpha (log pi(a|s) + target entropy): alpha grows while the policy's entropy,
    -E[log pi], is below the target, and shrinks while above (CleanRL's form)."""
    return -jnp.exp(log_alpha) * (jax.lax.stop_gradient(log_prob) + target_entropy)


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
    # copied the whole buffer at each gradient step (docs/sac.md, "Sampling the buffer").
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
    noise: jax.Array  # [A], the last step's standard normal of the policy's sample (0 at a start)


class EpisodeEnd(NamedTuple):
    """Whether a step ended an episode, and that episode's return and length if it did."""

    done: jax.Array
    episode_return: jax.Array
    episode_length: jax.Array


class Learner(NamedTuple):
    """What the gradient steps change."""

    network: ActorCritic
    target_critics: Critic  # leaves [2, ...]
    log_alpha: jax.Array  # the log of the temperature
    actor_opt_state: Any
    critic_opt_state: Any
    alpha_opt_state: Any
    gradient_steps: jax.Array


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
    action_scale = 0.5 * (high - low)  # [A]: the map onto the bounds stretches [-1, 1] by this
    target_entropy = -float(action_dim)  # the heuristic of Haarnoja et al. (2018b)
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
        # alpha starts at 1 when tuned (CleanRL, SB3)
        log_alpha = jnp.float32(0.0 if args.autotune else math.log(args.alpha))
        learner = Learner(network=network, target_critics=network.critics, log_alpha=log_alpha,
                          actor_opt_state=optimizer.init(network.actor),
                          critic_opt_state=optimizer.init(network.critics),
                          alpha_opt_state=optimizer.init(log_alpha), gradient_steps=jnp.int32(0))
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
        action_key, random_key, step_key = jax.random.split(key, 3)
        # The rollout's randomness, drawn before the scan.
        action_keys = jax.random.split(action_key, (T, N))
        random_action = jax.random.uniform(random_key, (T, N, action_dim), minval=-1.0, maxval=1.0)
        step_keys = jax.random.split(step_key, (T, N))
        step_all = jax.vmap(env_step, in_axes=(None, 0, None, 0, 0, 0))

        def step(carry, xs):
            envs, buffer = carry
            envs, (transition, episode_end) = step_all(actor, envs, *xs)
            return (envs, buffer_add(buffer, transition)), episode_end

        return jax.lax.scan(step, (envs, buffer),
                            (random_phase, action_keys, random_action, step_keys))

    def env_step(actor: Actor, carry: EnvCarry, random_phase, action_key, random_action, key):
        """One step of one environment: a sample of the policy, or before learning_starts a
        uniform random action (drawn before the rollout)."""
        # AR(1), rho x + sqrt(1 - rho^2) N(0, 1): std 1 in the long run. rho = 0 keeps the
        # program of independent samples as it was (bit for bit: docs/sac.md's returns).
        rho = args.noise_correlation
        white_noise = jax.random.normal(action_key, (action_dim,))
        noise = (white_noise if rho == 0
                 else rho * carry.noise + math.sqrt(1 - rho**2) * white_noise)
        sampled, _ = reparameterised_action(actor, carry.obs, noise, action_scale)
        action = jnp.where(random_phase, random_action, sampled)
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
        """gradient_steps_per_update gradient steps, each on its own uniform minibatch."""

        def step(learner, key):
            sample_key, step_key = jax.random.split(key)
            return gradient_step(learner, buffer_sample(buffer, sample_key, args.batch_size),
                                 step_key)

        learner, metrics = jax.lax.scan(step, learner,
                                        jax.random.split(key, args.gradient_steps_per_update))
        return learner, jax.tree.map(jnp.mean, metrics)

    def skip_learning(learner: Learner, buffer: ReplayBuffer, key):
        """Before learning_starts: the learner as it is, and metrics of the same shape."""
        zero = jnp.float32(0)
        return learner, {"qf_loss": zero, "qf1_loss": zero, "qf2_loss": zero, "qf1_values": zero,
                         "qf2_values": zero, "actor_loss": zero, "alpha_loss": zero,
                         "alpha": jnp.exp(learner.log_alpha)}

    def gradient_step(learner: Learner, batch: Transition, key):
        """On a minibatch [B]: one step of the critics, then of the actor and of the
        temperature, then the target critics move tau of the way to the critics."""
        next_key, actor_key = jax.random.split(key)
        network, alpha = learner.network, jnp.exp(learner.log_alpha)
        next_actions, next_log_probs = jax.vmap(sample_action, in_axes=(None, 0, 0, None))(
            network.actor, batch.next_obs, jax.random.split(next_key, args.batch_size),
            action_scale)

        def batch_critic_loss(critics):
            loss, metrics = jax.vmap(critic_loss, in_axes=(None, None, 0, 0, 0, None, None))(
                critics, learner.target_critics, batch, next_actions, next_log_probs, alpha, args)
            return loss.mean(), metrics

        grads, metrics = jax.grad(batch_critic_loss, has_aux=True)(network.critics)
        updates, critic_opt_state = optimizer.update(grads, learner.critic_opt_state)
        critics = optax.apply_updates(network.critics, updates)

        def batch_actor_loss(actor):
            losses, log_probs = jax.vmap(actor_loss, in_axes=(None, None, 0, 0, None, None))(
                actor, critics, batch.obs, jax.random.split(actor_key, args.batch_size), alpha,
                action_scale)
            return losses.mean(), log_probs

        (loss, log_probs), grads = jax.value_and_grad(batch_actor_loss, has_aux=True)(
            network.actor)
        updates, actor_opt_state = optimizer.update(grads, learner.actor_opt_state)
        actor = optax.apply_updates(network.actor, updates)

        def batch_alpha_loss(log_alpha):
            return jax.vmap(alpha_loss, in_axes=(None, 0, None))(
                log_alpha, log_probs, target_entropy).mean()

        temperature_loss, grads = jax.value_and_grad(batch_alpha_loss)(learner.log_alpha)
        updates, alpha_opt_state = optimizer.update(grads, learner.alpha_opt_state)
        # without --autotune the temperature stays at --alpha
        log_alpha = (optax.apply_updates(learner.log_alpha, updates) if args.autotune
                     else learner.log_alpha)

        learner = Learner(
            network=eqx.tree_at(lambda n: (n.actor, n.critics), network, (actor, critics)),
            target_critics=optax.incremental_update(critics, learner.target_critics, args.tau),
            log_alpha=log_alpha, actor_opt_state=actor_opt_state,
            critic_opt_state=critic_opt_state, alpha_opt_state=alpha_opt_state,
            gradient_steps=learner.gradient_steps + 1)
        return learner, {**jax.tree.map(jnp.mean, metrics), "actor_loss": loss,
                         "alpha_loss": temperature_loss, "alpha": alpha}

    def train_chunk(state: TrainState):
        state, metrics = jax.lax.scan(update_step, state, length=args.updates_per_chunk)
        sums = {k: metrics.pop(k).sum() for k in list(metrics) if k.startswith("episode_")}
        learning = metrics.pop("learning")
        # Loss means over the updates that took gradient steps; NaN (not logged) if none did.
        means = {k: jnp.where(learning, v, 0).sum() / learning.sum() for k, v in metrics.items()}
        # A loss that went non-finite in any update of the chunk stays visible.
        means["finite"] = (jnp.isfinite(metrics["qf_loss"]) | ~learning).all()
        return state, {**means, **sums}

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
    """One step of one environment with the policy's mean action tanh(mean), its greedy
    action (as CleanRL's and SB3's evaluation)."""
    key, step_key = jax.random.split(carry.key)
    mean, _ = network.actor(carry.obs)
    action = to_env_action(jnp.tanh(mean), *action_bounds(env, env_params))
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


LOSS_TAGS = ("qf_loss", "qf1_loss", "qf2_loss", "qf1_values", "qf2_values", "actor_loss",
             "alpha", "alpha_loss")


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
            state = state._replace(learner=state.learner._replace(
                network=loaded, target_critics=loaded.critics))
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
