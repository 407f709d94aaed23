"""Times one rejax algorithm for peers.py. Runs in the rejax environment (requirements-rejax.txt),
not the project's, and imports nothing from the project.

    .venv-rejax/bin/python docs/benchmarks/peers_rejax_runner.py --algo ppo \\
        --config '{"env": "CartPole-v1", "total_timesteps": 500000}' --num-seeds 8

Builds `rejax.get_algo(algo).create(**config)` and times `train`: one key, or `--num-seeds N`
keys through `jax.vmap(algo.train)`. As `algos/ppo.py`'s command line does, each CPU core is a
JAX device and the seed axis is sharded over the largest number of devices that divides it
(`--no-shard`: one device, plain `jit(vmap)`). Compile is `jit(...).lower(keys).compile()`;
training is the compiled call until `block_until_ready`. Prints one JSON line.

Config extras handled here, not by rejax:
  "eval_freq": defaults to total_timesteps, so that training runs as one block followed by
      one evaluation (rejax evaluates after every `eval_freq` steps, inside the compiled train);
  "skip_initial_evaluation": defaults to True (rejax also evaluates before training);
  "anneal_lr": "per_update" replaces learning_rate by the linear schedule of algos/ppo.py and
      PureJaxRL, lr * (1 - (count // (num_epochs * num_minibatches)) / num_updates), for the
      on-policy algorithms (rejax has no annealing option; its optax.adam takes the schedule).
  "hidden_layer_sizes": rebuilds the agent with these layer sizes after create(), for the
      algorithms whose create_agent fixes them (DQN and PQN: 64-64, and passing them in
      agent_kwargs is an error there; TD3's actor and critic: 64-64), actor and critic both
      for the actor-critic algorithms (SAC, TD3).
`--no-eval` replaces rejax's evaluation by a no-op, so that the timed call trains only.
"""

import time

PROCESS_START = time.perf_counter()

import argparse  # noqa: E402
import importlib.metadata  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--algo", default="ppo", help="rejax.get_algo name")
    parser.add_argument("--config", required=True, help="JSON: keyword arguments of create()")
    parser.add_argument("--num-seeds", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-shard", action="store_true",
                        help="one device, plain jit(vmap(train)), instead of one device per core")
    parser.add_argument("--no-eval", action="store_true",
                        help="replace rejax's evaluation callback by a no-op")
    parser.add_argument("--compile-options", default="{}",
                        help="JSON: XLA options for compile(), e.g. algos/ppo.py's")
    cli = parser.parse_args()

    # Before JAX's first operation, which `import gymnax` (imported by rejax) runs.
    if not cli.no_shard:
        os.environ.setdefault("JAX_NUM_CPU_DEVICES", str(os.cpu_count() or 1))

    import jax
    import numpy as np
    import rejax

    config = json.loads(cli.config)
    total = config["total_timesteps"]
    config.setdefault("eval_freq", total)
    config.setdefault("skip_initial_evaluation", True)
    anneal = config.pop("anneal_lr", None)
    hidden_layer_sizes = config.pop("hidden_layer_sizes", None)
    if anneal == "per_update":
        lr = config["learning_rate"]
        steps_per_update = config["num_envs"] * config["num_steps"]
        num_updates = math.ceil(config["eval_freq"] / steps_per_update) * math.ceil(
            total / config["eval_freq"])
        optimizer_steps_per_update = config["num_epochs"] * config["num_minibatches"]

        def learning_rate(count):
            return lr * (1.0 - (count // optimizer_steps_per_update) / num_updates)

        config["learning_rate"] = learning_rate
    elif anneal is not None:
        raise ValueError(f"unknown anneal_lr {anneal!r}")

    algo = rejax.get_algo(cli.algo).create(**config)
    if hidden_layer_sizes is not None:
        sizes = tuple(hidden_layer_sizes)
        if hasattr(algo, "agent"):
            algo = algo.replace(agent=algo.agent.clone(hidden_layer_sizes=sizes))
        else:  # actor-critic algorithms (SAC, TD3): both networks
            algo = algo.replace(actor=algo.actor.clone(hidden_layer_sizes=sizes),
                                critic=algo.critic.clone(hidden_layer_sizes=sizes))
    if cli.no_eval:
        algo = algo.replace(eval_callback=lambda algo, ts, rng: ())

    key = jax.random.key(cli.seed)
    devices = 1
    if cli.num_seeds == 1:
        arg, train = key, jax.jit(algo.train)
    else:
        keys = jax.random.split(key, cli.num_seeds)
        if cli.no_shard:
            arg, train = keys, jax.jit(jax.vmap(algo.train))
        else:
            all_devices = jax.devices()
            devices = max(d for d in range(1, len(all_devices) + 1) if cli.num_seeds % d == 0)
            mesh = jax.sharding.Mesh(np.array(all_devices[:devices]), ("seed",))
            sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("seed"))
            arg = jax.device_put(keys, sharding)
            train = jax.jit(jax.vmap(algo.train), in_shardings=sharding, out_shardings=sharding)

    compile_start = time.perf_counter()
    compiled = train.lower(arg).compile(json.loads(cli.compile_options) or None)
    compile_seconds = time.perf_counter() - compile_start

    train_start = time.perf_counter()
    ts, evaluation = jax.block_until_ready(compiled(arg))
    train_seconds = time.perf_counter() - train_start

    steps = int(np.asarray(ts.global_step).ravel()[0])  # what train ran, per seed
    eval_return = None
    if not cli.no_eval:
        _, returns = evaluation  # (lengths, returns), [seeds,] evaluations x 128 episodes
        eval_return = float(np.asarray(returns)[..., -1, :].mean())
    print(json.dumps({
        "impl": f"rejax {importlib.metadata.version('rejax')}",
        "algo": cli.algo, "num_seeds": cli.num_seeds, "steps": steps, "devices": devices,
        "sharded": cli.num_seeds > 1 and not cli.no_shard, "evaluation": not cli.no_eval,
        "sps": steps * cli.num_seeds / train_seconds, "compile_seconds": compile_seconds,
        "train_seconds": train_seconds, "final_eval_return": eval_return,
        "jax": jax.__version__, "process_seconds": time.perf_counter() - PROCESS_START,
    }))


if __name__ == "__main__":
    main()
