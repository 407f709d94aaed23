"""Proximal Policy Optimisation (PPO) with the clipped objective, for discrete actions.

PPO (Schulman et al. 2017, https://arxiv.org/abs/1707.06347) alternates between collecting
`num_steps` transitions from `num_envs` parallel environments with the current policy and
running `update_epochs` epochs of minibatch gradient steps on a clipped surrogate objective,
which keeps the new policy close to the one that collected the data. Advantages come from
generalised advantage estimation (GAE, https://arxiv.org/abs/1506.02438). Everything, the
environments included, runs inside one jitted `lax.scan`; `--num-seeds N` trains N agents at once.
Implementation details, measured returns and speed: docs/ppo.md.

Usage:
    python algos/ppo.py --env CartPole-v1
    python algos/ppo.py --env Breakout-MinAtar --num-seeds 8 --total-timesteps 10000000
    python algos/ppo.py --load-model runs/<run>/model.eqx --eval-only --capture-video
    python algos/ppo.py --help

Environments: any gymnax id with a discrete action space (CartPole-v1, Acrobot-v1,
Catch-bsuite, the MinAtar games, ...), including ids added with `gymnax.register`. Observations
of rank 1 or 2 go through a 64-64 tanh MLP, rank-3 images through a small ReLU CNN.

From your own code:
    init, train_chunk, train = make_train(Args(env="CartPole-v1"))
    state, metrics = jax.jit(jax.vmap(train))(jax.random.split(jax.random.key(0), 8))

Reading guide, top to bottom:
    Args             the flags and their defaults
    ActorCritic      the network (Torso: an MLP, or a small CNN for images)
    ppo_loss         the loss of one sample
    make_train       one update's outline (update_step), then its stages in order:
                     collect_rollout, compute_advantages, run_epochs
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

ALGO = "ppo"


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
    num_envs: int = 4
    """parallel environments per agent"""
    num_steps: int = 128
    """steps per environment in each rollout"""
    learning_rate: float = 2.5e-4
    """Adam learning rate"""
    anneal_lr: bool = True
    """anneal the learning rate linearly to 0 over training"""
    gamma: float = 0.99
    """discount factor"""
    gae_lambda: float = 0.95
    """lambda of generalised advantage estimation"""
    num_minibatches: int = 4
    """minibatches per epoch"""
    update_epochs: int = 4
    """epochs over each rollout"""
    norm_adv: bool = True
    """normalise advantages within each minibatch"""
    clip_coef: float = 0.2
    """surrogate clipping epsilon"""
    clip_vloss: bool = True
    """clip the value loss around the old values, as the policy is clipped"""
    ent_coef: float = 0.01
    """entropy bonus coefficient"""
    vf_coef: float = 0.5
    """value loss coefficient"""
    max_grad_norm: float = 0.5
    """global gradient-norm clipping"""
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
    def batch_size(self) -> int:
        return self.num_envs * self.num_steps

    @property
    def minibatch_size(self) -> int:
        return self.batch_size // self.num_minibatches

    @property
    def updates_per_chunk(self) -> int:
        return self.total_timesteps // (self.batch_size * self.num_chunks)

    @property
    def num_updates(self) -> int:
        """Updates actually run: total_timesteps rounded down to whole chunks."""
        return self.updates_per_chunk * self.num_chunks


class ConfigError(ValueError):
    """Bad input that main reports as a one-line message."""


def check_args(args: Args) -> None:
    positive = ["num_seeds", "total_timesteps", "num_envs", "num_steps", "num_minibatches",
                "update_epochs", "num_chunks", "eval_episodes"]
    for name in positive:
        if getattr(args, name) <= 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.batch_size % args.num_minibatches:
        raise ConfigError(f"--num-envs x --num-steps ({args.batch_size}) must be divisible by "
                          f"--num-minibatches ({args.num_minibatches})")
    if args.updates_per_chunk == 0 and not args.eval_only:
        raise ConfigError(f"--total-timesteps ({args.total_timesteps}) must be at least --num-envs x "
                          f"--num-steps x --num-chunks ({args.batch_size * args.num_chunks})")
    if not args.learning_rate > 0:
        raise ConfigError(f"--learning-rate must be positive, got {args.learning_rate}")
    if not 0 <= args.gamma <= 1 or not 0 <= args.gae_lambda <= 1:
        raise ConfigError("--gamma and --gae-lambda must lie in [0, 1]")
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
# Network: separate actor and critic, each a torso and a linear head (as CleanRL and PureJaxRL).


def orthogonal_linear(key, in_features: int, out_features: int, scale: float) -> eqx.nn.Linear:
    """A Linear layer with orthogonal weights of gain `scale` and zero biases."""
    # Shapes only: eval_shape builds the layer without running its default random init.
    layer = eqx.filter_eval_shape(eqx.nn.Linear, in_features, out_features, key=jax.random.key(0))
    weight = jax.nn.initializers.orthogonal(scale)(key, (out_features, in_features))
    return eqx.tree_at(lambda l: (l.weight, l.bias), layer, (weight, jnp.zeros(out_features)))


class Torso(eqx.Module):
    """64-64 tanh MLP on flattened observations; for images [H, W, C] a 3x3 convolution with 16
    channels (as in Young & Tian 2019's MinAtar network), then a 256-256 MLP, all ReLU (why
    not their one 128-unit layer: docs/ppo.md, "Why the image network has a 256-256 MLP")."""

    conv: eqx.nn.Linear | None  # the 3x3 convolution, as a Linear layer on 3x3 patches
    layers: tuple[eqx.nn.Linear, ...]

    def __init__(self, key, obs_shape: tuple[int, ...]):
        conv_key, key_0, key_1 = jax.random.split(key, 3)
        if len(obs_shape) == 3:
            height, width, channels = obs_shape
            self.conv = orthogonal_linear(conv_key, 9 * channels, 16, math.sqrt(2))
            conv_features = 16 * (height - 2) * (width - 2)
            self.layers = (orthogonal_linear(key_0, conv_features, 256, math.sqrt(2)),
                           orthogonal_linear(key_1, 256, 256, math.sqrt(2)))
        else:
            self.conv = None
            self.layers = (orthogonal_linear(key_0, math.prod(obs_shape), 64, math.sqrt(2)),
                           orthogonal_linear(key_1, 64, 64, math.sqrt(2)))

    @property
    def out_features(self) -> int:
        return self.layers[-1].out_features

    def __call__(self, obs):
        obs = obs.astype(jnp.float32)  # the one cast: elsewhere obs keep the environment's dtype
        if self.conv is None:
            x, activation = obs.ravel(), jnp.tanh
        else:
            # A 'valid' 3x3 convolution: the Linear layer applied to every pixel's 3x3 patch, as
            # a matmul: XLA's CPU convolution gradient is about 50x slower in a loop (docs/ppo.md).
            h, w = obs.shape[0] - 2, obs.shape[1] - 2
            patches = jnp.concatenate([obs[i:i + h, j:j + w] for i in range(3) for j in range(3)],
                                      axis=-1)  # [H - 2, W - 2, 9 C]
            x = jax.nn.relu(jax.vmap(jax.vmap(self.conv))(patches)).ravel()
            activation = jax.nn.relu
        for layer in self.layers:
            x = activation(layer(x))
        return x


class ActorCritic(eqx.Module):
    """Arrays only, so it is a scan carry, a `jax.grad` argument and an `optax.init` target."""

    actor_torso: Torso
    actor_head: eqx.nn.Linear
    critic_torso: Torso
    critic_head: eqx.nn.Linear

    def __init__(self, key, obs_shape: tuple[int, ...], num_actions: int):
        keys = jax.random.split(key, 4)
        self.actor_torso = Torso(keys[0], obs_shape)
        self.critic_torso = Torso(keys[1], obs_shape)
        # A small policy head starts near-uniform; the value head starts at unit scale.
        self.actor_head = orthogonal_linear(keys[2], self.actor_torso.out_features, num_actions, 0.01)
        self.critic_head = orthogonal_linear(keys[3], self.critic_torso.out_features, 1, 1.0)

    def __call__(self, obs):
        """One observation -> (logits [A], value [])."""
        return self.policy(obs), self.value(obs)

    def policy(self, obs):
        return self.actor_head(self.actor_torso(obs))

    def value(self, obs):
        return self.critic_head(self.critic_torso(obs))[0]


# ---------------------------------------------------------------------------------------------
# Loss of one sample; the minibatch loss is its mean (vmapped in make_train's minibatch_step).


class Sample(NamedTuple):
    """One transition of the update batch, with what the rollout and GAE computed for it."""

    obs: jax.Array
    action: jax.Array
    log_prob: jax.Array  # log pi_old(action | obs), of the policy that acted
    value: jax.Array  # V_old(obs), of the critic before the update
    advantage: jax.Array
    target: jax.Array  # advantage + value, the critic's regression target


def ppo_loss(network: ActorCritic, sample: Sample, args: Args):
    """Clipped-surrogate PPO loss of one sample -> (loss, metrics). `sample.advantage` is
    already normalised over its minibatch."""
    logits, value = network(sample.obs)
    log_probs = jax.nn.log_softmax(logits)
    log_ratio = log_probs[sample.action] - sample.log_prob
    ratio = jnp.exp(log_ratio)
    clipped_ratio = jnp.clip(ratio, 1 - args.clip_coef, 1 + args.clip_coef)
    # rlax.clipped_surrogate_pg_loss, for one sample.
    pg_loss = -jnp.minimum(ratio * sample.advantage, clipped_ratio * sample.advantage)

    value_loss = jnp.square(value - sample.target)
    if args.clip_vloss:
        clipped_value = sample.value + jnp.clip(value - sample.value, -args.clip_coef, args.clip_coef)
        value_loss = jnp.maximum(value_loss, jnp.square(clipped_value - sample.target))
    value_loss = 0.5 * value_loss

    entropy = -jnp.sum(jnp.exp(log_probs) * log_probs)
    loss = pg_loss + args.vf_coef * value_loss - args.ent_coef * entropy
    metrics = {"loss": loss, "policy_loss": pg_loss, "value_loss": value_loss, "entropy": entropy,
               # The k3 estimator of KL(old || new) and the fraction of clipped ratios (CleanRL).
               "approx_kl": (ratio - 1) - log_ratio,
               "clipfrac": (jnp.abs(ratio - 1) > args.clip_coef).astype(jnp.float32)}
    return loss, metrics


# ---------------------------------------------------------------------------------------------
# Training: one update = collect a rollout, compute advantages and targets, run the epochs.


class EnvCarry(NamedTuple):
    """What one environment carries from step to step."""

    env_state: Any  # gymnax state
    obs: jax.Array
    episode_return: jax.Array  # return of the running episode so far
    episode_length: jax.Array


class Transition(NamedTuple):
    obs: jax.Array
    action: jax.Array
    log_prob: jax.Array
    reward: jax.Array
    terminated: jax.Array
    truncated: jax.Array
    final_obs: jax.Array  # the observation the step reached, before any auto-reset


class EpisodeEnd(NamedTuple):
    """Whether a step ended an episode, and that episode's return and length if it did."""

    done: jax.Array
    episode_return: jax.Array
    episode_length: jax.Array


class TrainState(NamedTuple):
    network: ActorCritic
    opt_state: Any
    envs: EnvCarry  # leaves [N, ...], one row per environment
    key: jax.Array


def make_train(args: Args):
    """Returns pure functions for ONE agent: init(key) -> state, train_chunk(state) ->
    (state, metrics) running `updates_per_chunk` updates, and train(key) -> (state, metrics)
    for the whole run. vmap them over keys for several seeds."""
    check_args(args)
    env, env_params = make_env(args)
    obs_shape = env.observation_space(env_params).shape
    num_actions = env.action_space(env_params).n
    T, N = args.num_steps, args.num_envs
    optimizer_steps_per_update = args.update_epochs * args.num_minibatches

    def learning_rate(count):
        # Constant within an update, falling linearly from learning_rate to 0 (CleanRL).
        return args.learning_rate * (1.0 - (count // optimizer_steps_per_update) / args.num_updates)

    # flatten: clipping and the optimiser see one flat vector, a few large operations instead
    # of many small ones per layer (faster on a CPU, and quicker to compile).
    optimizer = optax.flatten(optax.chain(
        optax.clip_by_global_norm(args.max_grad_norm),
        optax.adam(learning_rate if args.anneal_lr else args.learning_rate, eps=1e-5),
    ))

    def init(key) -> TrainState:
        network_key, reset_key, key = jax.random.split(key, 3)
        network = ActorCritic(network_key, obs_shape, num_actions)
        obs, env_state = jax.vmap(env.reset, (0, None))(jax.random.split(reset_key, N), env_params)
        envs = EnvCarry(env_state=env_state, obs=obs, episode_return=jnp.zeros(N),
                        episode_length=jnp.zeros(N, jnp.int32))
        return TrainState(network=network, opt_state=optimizer.init(network), envs=envs, key=key)

    def update_step(state: TrainState, _):
        """One update, in outline: collect a rollout, compute its advantages, run the epochs."""
        key, rollout_key, epoch_key = jax.random.split(state.key, 3)
        envs, (traj, episode_end) = collect_rollout(state.network, state.envs, rollout_key)
        batch = jax.vmap(compute_advantages, in_axes=(None, 1, 0), out_axes=1)(
            state.network, traj, envs.obs)  # [T, N]
        (network, opt_state), metrics = run_epochs(state.network, state.opt_state, batch, epoch_key)

        # How much of the targets' variance the critic explained before the update (CleanRL).
        metrics["explained_variance"] = 1 - jnp.var(batch.target - batch.value) / jnp.var(batch.target)
        metrics["episode_count"] = episode_end.done.sum()
        metrics["episode_return_sum"] = (episode_end.episode_return * episode_end.done).sum()
        metrics["episode_length_sum"] = (episode_end.episode_length * episode_end.done).sum()
        return TrainState(network=network, opt_state=opt_state, envs=envs, key=key), metrics

    def collect_rollout(network: ActorCritic, envs: EnvCarry, key):
        """T steps of the N environments -> (envs, (transitions [T, N], episode ends [T, N]))."""
        action_key, step_key = jax.random.split(key)
        # The keys of every step [T, N], split before the scan.
        action_keys = jax.random.split(action_key, (T, N))
        step_keys = jax.random.split(step_key, (T, N))
        step_all = jax.vmap(env_step, in_axes=(None, 0, 0, 0))
        return jax.lax.scan(lambda envs, keys: step_all(network, envs, *keys), envs,
                            (action_keys, step_keys))

    def env_step(network: ActorCritic, carry: EnvCarry, action_key, step_key):
        """One step of one environment, its action sampled from the policy."""
        logits = network.policy(carry.obs)
        action = jax.random.categorical(action_key, logits)
        log_prob = jax.nn.log_softmax(logits)[action]
        obs, env_state, reward, terminated, truncated, info = env.step(
            step_key, carry.env_state, action, env_params)
        reward = reward.astype(jnp.float32)
        done = terminated | truncated
        episode_return = carry.episode_return + reward
        episode_length = carry.episode_length + 1
        transition = Transition(obs=carry.obs, action=action, log_prob=log_prob, reward=reward,
                                terminated=terminated, truncated=truncated,
                                final_obs=info["final_observation"])
        episode_end = EpisodeEnd(done, episode_return, episode_length)  # counted only where done
        carry = EnvCarry(env_state=env_state, obs=obs, episode_return=episode_return * ~done,
                         episode_length=episode_length * ~done)
        return carry, (transition, episode_end)

    def compute_advantages(network: ActorCritic, traj: Transition, last_obs) -> Sample:
        """GAE of one environment's trajectory [T] -> its samples [T]; vmapped over envs."""
        # The rollout needed only the policy; values are computed here in one batch.
        value = jax.vmap(network.value)(traj.obs)  # [T]
        last_value = network.value(last_obs)
        # Bootstrapping stops only at termination. At a time limit, the value of the state the
        # episode reached is folded into the reward, and the discount of 0 cuts the GAE trace.
        final_value = jax.vmap(network.value)(traj.final_obs)  # [T]
        time_limit = traj.truncated & ~traj.terminated
        r_t = traj.reward + args.gamma * time_limit * final_value
        discount_t = args.gamma * (1.0 - (traj.terminated | traj.truncated))
        values = jnp.append(value, last_value)  # [T + 1]
        advantage = rlax.truncated_generalized_advantage_estimation(
            r_t, discount_t, args.gae_lambda, values)
        return Sample(obs=traj.obs, action=traj.action, log_prob=traj.log_prob, value=value,
                      advantage=advantage, target=advantage + value)

    def run_epochs(network: ActorCritic, opt_state, batch: Sample, key):
        """update_epochs passes over the batch [T, N], each in a fresh random order split into
        num_minibatches minibatches -> ((network, opt_state), mean metrics)."""

        def epoch(carry, key):
            order = jax.random.permutation(key, args.batch_size)
            indices = order.reshape(args.num_minibatches, args.minibatch_size)
            minibatches = jax.tree.map(lambda x: x.reshape(T * N, *x.shape[2:])[indices], batch)
            return jax.lax.scan(minibatch_step, carry, minibatches)  # leaves [M, B / M, ...]

        carry, metrics = jax.lax.scan(epoch, (network, opt_state),
                                      jax.random.split(key, args.update_epochs))
        return carry, jax.tree.map(jnp.mean, metrics)

    def minibatch_step(carry, minibatch: Sample):
        """One gradient step on the mean loss of a minibatch [B]."""
        network, opt_state = carry
        if args.norm_adv:
            advantage = minibatch.advantage
            minibatch = minibatch._replace(
                advantage=(advantage - advantage.mean()) / (advantage.std() + 1e-8))

        def minibatch_loss(network):
            loss, metrics = jax.vmap(ppo_loss, in_axes=(None, 0, None))(network, minibatch, args)
            return loss.mean(), metrics

        grads, metrics = jax.grad(minibatch_loss, has_aux=True)(network)
        updates, opt_state = optimizer.update(grads, opt_state)
        return (optax.apply_updates(network, updates), opt_state), jax.tree.map(jnp.mean, metrics)

    def train_chunk(state: TrainState):
        state, metrics = jax.lax.scan(update_step, state, length=args.updates_per_chunk)
        sums = {k: metrics.pop(k).sum() for k in list(metrics) if k.startswith("episode_")}
        means = jax.tree.map(jnp.mean, metrics)
        # A loss that went non-finite in any update of the chunk stays visible.
        means["finite"] = jnp.isfinite(metrics["loss"]).all()
        # The rate of the chunk's last step, whose index is one below Adam's count of steps.
        count = optax.tree_utils.tree_get(state.opt_state, "ScaleByAdamState").count
        means["learning_rate"] = (learning_rate(count - 1) if args.anneal_lr
                                  else jnp.float32(args.learning_rate))
        return state, {**means, **sums}

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


def greedy_step(network: ActorCritic, carry: EvalCarry, env, env_params) -> EvalCarry:
    """One step of one environment with the greedy (argmax) action."""
    key, step_key = jax.random.split(carry.key)
    action = jnp.argmax(network.policy(carry.obs))
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
    compiled programs instead of compiling them (figures in docs/ppo.md). The folder is
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
    like = jax.vmap(lambda key: ActorCritic(key, obs_shape, num_actions))(
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


LOSS_TAGS = ("loss", "policy_loss", "value_loss", "entropy", "approx_kl", "clipfrac",
             "explained_variance")


def log_chunk(writers, metrics, step: int, sps: float):
    """Per-seed TensorBoard scalars of one chunk; returns the mean episodic return of each
    seed [S], NaN for a seed where no episode ended (it logs no return then)."""
    count = metrics["episode_count"]
    mean_return = np.where(count > 0, metrics["episode_return_sum"] / np.maximum(count, 1), np.nan)
    mean_length = metrics["episode_length_sum"] / np.maximum(count, 1)
    for seed, writer in enumerate(writers):
        if count[seed] > 0:
            writer.add_scalar("charts/episodic_return", mean_return[seed], step)
            writer.add_scalar("charts/episodic_length", mean_length[seed], step)
        writer.add_scalar("charts/SPS", sps / len(writers), step)
        writer.add_scalar("charts/learning_rate", metrics["learning_rate"][seed], step)
        for name in LOSS_TAGS:
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
    steps_per_chunk = args.updates_per_chunk * args.batch_size
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
    num_timesteps = args.num_chunks * args.updates_per_chunk * args.batch_size  # per seed
    if num_timesteps != args.total_timesteps and not args.eval_only:
        print(f"note: --total-timesteps {args.total_timesteps:,} runs {num_timesteps:,} steps per "
              f"seed ({args.num_chunks} chunks of {args.updates_per_chunk} updates of "
              f"{args.batch_size} steps)")

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
            state = state._replace(network=jax.device_put(loaded, sharding))
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
