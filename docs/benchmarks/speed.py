"""Speed of algos/ppo.py: training SPS and compile time for 1, 8 and 128 seeds, the end-to-end
time of `python algos/ppo.py --env CartPole-v1`, and the fraction of the pure environment
throughput that training reaches.

Training numbers come from the command line (summary.json: `sps` excludes compile time,
`compile_seconds`, `wall_seconds`), the median of --repeats runs. Env-only SPS runs the same
environments with random actions in the same structure as training (a `lax.scan` over
`num_steps` steps of the vmapped `env.step`, `updates_per_chunk` of those per compiled chunk,
vmapped over seeds and sharded over the CPU cores, compiled with main's options), in a
subprocess that exposes the cores as devices before anything runs a JAX operation; it includes
drawing the actions and keys, not the network or the update.

    python docs/benchmarks/speed.py                        # full: about 2.5 minutes on 2 cores
    python docs/benchmarks/speed.py --total-timesteps 20480 --many-seeds-timesteps 10240 \\
        --repeats 1 --out /tmp/speed.md                    # smoke test
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import common


def env_only_sps(env_id: str, num_seeds: int, total_timesteps: int) -> dict:
    """Random-action SPS of the training loop's environment part. Call in a fresh process:
    it exposes the CPU cores as devices, as ppo.py's command line does, which works only before
    any JAX operation, and `import gymnax` (in loading ppo.py) runs one."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    jax.config.update("jax_num_cpu_devices", os.cpu_count() or 1)
    ppo = common.load_ppo()

    args = ppo.Args(env=env_id, num_seeds=num_seeds, total_timesteps=total_timesteps)
    ppo.check_args(args)
    env, env_params = ppo.make_env(args)
    T, N = args.num_steps, args.num_envs
    num_actions = env.action_space(env_params).n

    def init(key):
        reset_key, key = jax.random.split(key)
        _, env_state = jax.vmap(env.reset, (0, None))(jax.random.split(reset_key, N), env_params)
        return env_state, key

    def env_step(env_state, action_and_keys):
        action, step_keys = action_and_keys  # [N], [N]
        obs, env_state, reward, terminated, truncated, _ = jax.vmap(env.step, (0, 0, 0, None))(
            step_keys, env_state, action, env_params)
        # Consume what training stores, so that XLA cannot drop computing it.
        done = terminated | truncated
        return env_state, (obs.astype(jnp.float32).sum(), reward.sum(), done.sum())

    def rollout(carry, _):  # the rollout of one update, with random actions for the policy
        env_state, key = carry
        key, action_key, step_key = jax.random.split(key, 3)
        xs = (jax.random.randint(action_key, (T, N), 0, num_actions),
              jax.random.split(step_key, (T, N)))
        env_state, outputs = jax.lax.scan(env_step, env_state, xs)
        return (env_state, key), jax.tree.map(jnp.sum, outputs)

    def chunk(carry):
        return jax.lax.scan(rollout, carry, length=args.updates_per_chunk)

    sharding = ppo.seed_sharding(num_seeds)
    keys = jax.device_put(jax.random.split(jax.random.key(0), num_seeds), sharding)
    compile_start = time.perf_counter()
    carry = jax.jit(jax.vmap(init), out_shardings=sharding)(keys)
    chunk_all = ppo.compile_ahead(jax.jit(jax.vmap(chunk), in_shardings=sharding,
                                          out_shardings=sharding).lower(carry))  # main's options
    compile_seconds = time.perf_counter() - compile_start
    seconds = 0.0
    for _ in range(args.num_chunks):
        start = time.perf_counter()
        carry, outputs = chunk_all(carry)
        jax.tree.map(np.asarray, outputs)  # waits for the chunk, as main does
        seconds += time.perf_counter() - start
    steps = args.num_updates * args.batch_size
    return {"sps": steps * num_seeds / seconds, "steps": steps, "compile_seconds": compile_seconds,
            "devices": len(sharding.mesh.devices.ravel())}


def run_env_only(env_id: str, num_seeds: int, total_timesteps: int) -> dict:
    command = [sys.executable, __file__, "--env-only-worker", "--env", env_id,
               "--seeds", str(num_seeds), "--total-timesteps", str(total_timesteps)]
    process = subprocess.run(command, capture_output=True, text=True, cwd=common.REPO)
    if process.returncode != 0:
        raise RuntimeError(f"env-only worker failed:\n{process.stderr[-3000:]}")
    result = json.loads(process.stdout.strip().splitlines()[-1])
    print(f"  env only, {num_seeds} seeds x {result['steps']:,} steps: SPS {result['sps']:,.0f} "
          f"on {result['devices']} devices", flush=True)
    return result


def median_of(runs: list[common.Run], key: str) -> float:
    return statistics.median(run.summary[key] for run in runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", default="CartPole-v1")
    parser.add_argument("--total-timesteps", type=int, default=500_000,
                        help="steps per seed for 1 and 8 seeds (ppo.py's default)")
    parser.add_argument("--many-seeds", type=int, default=128)
    parser.add_argument("--many-seeds-timesteps", type=int, default=100_000,
                        help="steps per seed for --many-seeds seeds")
    parser.add_argument("--repeats", type=int, default=3, help="runs per row; medians reported")
    parser.add_argument("--out", type=Path, default=common.RESULTS / "speed.md")
    parser.add_argument("--log-dir", type=Path, default=common.LOG_DIR / "speed")
    parser.add_argument("--env-only-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--seeds", type=int, default=1, help=argparse.SUPPRESS)
    cli = parser.parse_args()
    if cli.env_only_worker:
        print(json.dumps(env_only_sps(cli.env, cli.seeds, cli.total_timesteps)))
        return

    configs = [(1, cli.total_timesteps), (8, cli.total_timesteps),
               (cli.many_seeds, cli.many_seeds_timesteps)]
    rows, end_to_end = [], None
    for num_seeds, timesteps in configs:
        print(f"{cli.env}: {num_seeds} seeds x {timesteps:,} steps, {cli.repeats} runs", flush=True)
        runs = [common.run_ppo(cli.env, num_seeds, timesteps, log_dir=cli.log_dir)
                for _ in range(cli.repeats)]
        if num_seeds == 1:
            end_to_end = [run.process_seconds for run in runs]
        env_only = run_env_only(cli.env, num_seeds, timesteps)
        sps = median_of(runs, "sps")
        rows.append([num_seeds, f"{runs[0].summary['steps']:,}", runs[0].summary["devices"],
                     f"{sps:,.0f}",
                     f"{median_of(runs, 'compile_seconds'):.1f}",
                     f"{median_of(runs, 'wall_seconds'):.1f}",
                     f"{statistics.median(run.process_seconds for run in runs):.1f}",
                     f"{env_only['sps']:,.0f}", f"{sps / env_only['sps']:.1%}"])
        if env_only["devices"] != runs[0].summary["devices"]:  # then the fraction is unfair
            rows[-1][-2] += f" ({env_only['devices']} devices)"

    command = f"python algos/ppo.py --env {cli.env}" + (
        "" if cli.total_timesteps == 500_000 else f" --total-timesteps {cli.total_timesteps}")
    text = (
        "# PPO speed\n\n"
        f"Generated by `python docs/benchmarks/speed.py` on {common.machine()}.\n\n"
        f"{cli.env}, ppo.py defaults otherwise (4 envs x 128 steps per update, 10 chunks). "
        f"Each row: median of {cli.repeats} runs of `algos/ppo.py --num-seeds N` (TensorBoard "
        "tracking on, as by default). From summary.json: SPS counts the environment steps of "
        "all seeds per second of training, compile excluded; compile is `compile_seconds`, the "
        "time the run waits for compilation; run wall is `wall_seconds`, from `main` to the "
        "end. Process is the whole `python` process, imports included. Env-only SPS: the same "
        "environments with random actions, in the same scan and the same sharding of the "
        "seeds over the devices (CPU cores), no network; the last column is the fraction of "
        "it that training reaches.\n\n"
        + common.markdown_table(["seeds", "steps / seed", "devices", "training SPS", "compile s",
                                 "run wall s", "process s", "env-only SPS",
                                 "training / env-only"], rows)
        + f"\nEnd to end, `{command}` as a user waits for it: median "
        f"{statistics.median(end_to_end):.1f} s over {len(end_to_end)} runs "
        f"(min {min(end_to_end):.1f}, max {max(end_to_end):.1f}).\n")
    common.write_text(cli.out, text)


if __name__ == "__main__":
    main()
