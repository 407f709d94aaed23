"""Speed of algos/ppo.py (or another algorithm, --algo): training SPS and compile time for 1,
8 and 128 seeds, the end-to-end time of `python algos/ppo.py --env CartPole-v1`, and the
fraction of the pure environment throughput that training reaches. With --against, a second
algorithm runs interleaved with the first (first, second, first, ...) in the same table, and
a column gives the first one's SPS as a multiple of the second's.

Training numbers come from the command line (summary.json: `sps` excludes compile time,
`compile_seconds`, `wall_seconds`), the median of --repeats runs. Env-only SPS runs the same
environments with random actions in the same structure as training (a `lax.scan` over
`num_steps` steps of the vmapped `env.step`, `updates_per_chunk` of those per compiled chunk,
vmapped over seeds and sharded over the CPU cores, compiled with main's options), in a
subprocess that exposes the cores as devices before anything runs a JAX operation; it includes
drawing the actions and keys, not the network or the update.

    python docs/benchmarks/speed.py                        # full: about 2.5 minutes on 2 cores
    python docs/benchmarks/speed.py --algo a2c --against ppo --repeats 5   # about 9 minutes
    python docs/benchmarks/speed.py --total-timesteps 20480 --many-seeds-timesteps 10240 \\
        --repeats 1 --out /tmp/speed.md                    # smoke test
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import common


def env_only_sps(algo: str, env_id: str, num_seeds: int, total_timesteps: int) -> dict:
    """Random-action SPS of the training loop's environment part, with the algorithm's default
    numbers of environments and steps. Call in a fresh process: it exposes the CPU cores as
    devices, as the command line does, which works only before any JAX operation, and
    `import gymnax` (in loading the algorithm file) runs one."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    jax.config.update("jax_num_cpu_devices", os.cpu_count() or 1)
    module = common.load_algo(algo)

    args = module.Args(env=env_id, num_seeds=num_seeds, total_timesteps=total_timesteps)
    module.check_args(args)
    env, env_params = module.make_env(args)
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

    sharding = module.seed_sharding(num_seeds)
    keys = jax.device_put(jax.random.split(jax.random.key(0), num_seeds), sharding)
    compile_start = time.perf_counter()
    carry = jax.jit(jax.vmap(init), out_shardings=sharding)(keys)
    chunk_all = module.compile_ahead(jax.jit(jax.vmap(chunk), in_shardings=sharding,
                                          out_shardings=sharding).lower(carry))  # main's options
    compile_seconds = time.perf_counter() - compile_start
    seconds = 0.0
    for _ in range(args.num_chunks):
        start = time.perf_counter()
        carry, outputs = chunk_all(carry)
        jax.tree.map(np.asarray, outputs)  # waits for the chunk, as main does
        seconds += time.perf_counter() - start
    steps = args.updates_per_chunk * args.num_chunks * args.batch_size
    return {"sps": steps * num_seeds / seconds, "steps": steps, "compile_seconds": compile_seconds,
            "devices": len(sharding.mesh.devices.ravel())}


def run_env_only(algo: str, env_id: str, num_seeds: int, total_timesteps: int) -> dict:
    command = [sys.executable, __file__, "--env-only-worker", "--algo", algo, "--env", env_id,
               "--seeds", str(num_seeds), "--total-timesteps", str(total_timesteps)]
    process = subprocess.run(command, capture_output=True, text=True, cwd=common.REPO)
    if process.returncode != 0:
        raise RuntimeError(f"env-only worker failed:\n{process.stderr[-3000:]}")
    result = json.loads(process.stdout.strip().splitlines()[-1])
    print(f"  env only ({algo}), {num_seeds} seeds x {result['steps']:,} steps: "
          f"SPS {result['sps']:,.0f} "
          f"on {result['devices']} devices", flush=True)
    return result


def median_of(runs: list[common.Run], key: str) -> float:
    return statistics.median(run.summary[key] for run in runs)


def busy_cpu_seconds() -> float:
    """CPU seconds the whole machine has been busy since boot, from /proc/stat (Linux): user,
    nice, system, irq, softirq and steal (the hypervisor's) time of all cores."""
    with open("/proc/stat") as f:
        user, nice, system, _, _, irq, softirq, steal = map(int, f.readline().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_measuring_others(algo: str, env: str, num_seeds: int, timesteps: int, log_dir: Path):
    """common.run_algo, and how many cores other processes kept busy meanwhile, on average
    (the machine's busy CPU time less the run's own, over the run's wall time) -> (Run, cores).
    On a shared machine, a run during which other work took a core is slower."""
    busy, own, start = busy_cpu_seconds(), children_cpu_seconds(), time.perf_counter()
    run = common.run_algo(algo, env, num_seeds, timesteps, log_dir=log_dir)
    others = (busy_cpu_seconds() - busy) - (children_cpu_seconds() - own)
    return run, max(others, 0.0) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--algo", default="ppo", help="the algorithm file measured: algos/ALGO.py")
    parser.add_argument("--against", default=None, metavar="ALGO",
                        help="another algorithm run interleaved with --algo, for the ratio")
    parser.add_argument("--env", default="CartPole-v1")
    parser.add_argument("--total-timesteps", type=int, default=500_000,
                        help="steps per seed for 1 and 8 seeds (the files' default)")
    parser.add_argument("--many-seeds", type=int, default=128)
    parser.add_argument("--many-seeds-timesteps", type=int, default=100_000,
                        help="steps per seed for --many-seeds seeds")
    parser.add_argument("--repeats", type=int, default=3, help="runs per row; medians reported")
    parser.add_argument("--out", type=Path, default=None,
                        help="markdown file (default speed.md in the algorithm's results)")
    parser.add_argument("--log-dir", type=Path, default=common.LOG_DIR / "speed")
    parser.add_argument("--env-only-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--seeds", type=int, default=1, help=argparse.SUPPRESS)
    cli = parser.parse_args()
    if cli.env_only_worker:
        print(json.dumps(env_only_sps(cli.algo, cli.env, cli.seeds, cli.total_timesteps)))
        return

    algos = [cli.algo] + ([cli.against] if cli.against else [])
    configs = [(1, cli.total_timesteps), (8, cli.total_timesteps),
               (cli.many_seeds, cli.many_seeds_timesteps)]
    rows, end_to_end = [], {}
    for num_seeds, timesteps in configs:
        print(f"{cli.env}: {num_seeds} seeds x {timesteps:,} steps, {cli.repeats} runs of "
              f"{' and '.join(algos)}", flush=True)
        runs, others = {algo: [] for algo in algos}, {algo: [] for algo in algos}
        for _ in range(cli.repeats):  # interleaved, so that both see the same machine
            for algo in algos:
                run, cores = run_measuring_others(algo, cli.env, num_seeds, timesteps, cli.log_dir)
                runs[algo].append(run)
                others[algo].append(cores)
        sps = {algo: median_of(runs[algo], "sps") for algo in algos}
        for algo in algos:
            if num_seeds == 1:
                end_to_end[algo] = [run.process_seconds for run in runs[algo]]
            env_only = run_env_only(algo, cli.env, num_seeds, timesteps)
            summary = runs[algo][0].summary
            rows.append([num_seeds, f"{summary['steps']:,}", summary["devices"],
                         f"{sps[algo]:,.0f}",
                         f"{median_of(runs[algo], 'compile_seconds'):.1f}",
                         f"{median_of(runs[algo], 'wall_seconds'):.1f}",
                         f"{statistics.median(run.process_seconds for run in runs[algo]):.1f}",
                         f"{env_only['sps']:,.0f}", f"{sps[algo] / env_only['sps']:.1%}",
                         f"{statistics.median(others[algo]):.2f}"])
            if env_only["devices"] != summary["devices"]:  # then the fraction is unfair
                rows[-1][-3] += f" ({env_only['devices']} devices)"
            if cli.against:
                rows[-1][:0] = [algo]
                rows[-1].append(f"{sps[algo] / sps[cli.against]:.2f}x")

    def defaults(algo) -> str:
        args = common.load_algo(algo).Args()
        return (f"{algo}.py defaults otherwise ({args.num_envs} envs x {args.num_steps} steps "
                f"per update, {args.num_chunks} chunks)")

    header = ["seeds", "steps / seed", "devices", "training SPS", "compile s", "run wall s",
              "process s", "env-only SPS", "training / env-only", "cores busy with other work"]
    if cli.against:
        header = ["algo", *header, f"SPS / {cli.against}'s"]
    timesteps_flag = ("" if cli.total_timesteps == 500_000
                      else f" --total-timesteps {cli.total_timesteps}")
    command = "speed.py" + (f" --algo {cli.algo}" if cli.algo != "ppo" else "") + (
        f" --against {cli.against}" if cli.against else "")
    text = (
        f"# {cli.algo.upper()} speed" + (f" against {cli.against.upper()}" if cli.against else "")
        + "\n\n"
        f"Generated by `python docs/benchmarks/{command}` on {common.machine()}.\n\n"
        f"{cli.env}, {'; '.join(defaults(algo) for algo in algos)}. "
        f"Each row: median of {cli.repeats} runs of "
        f"`algos/{'<algo>' if cli.against else cli.algo}.py --num-seeds N` "
        + ("(the two files' runs interleaved) " if cli.against else "")
        + "(TensorBoard tracking on, as by default). From summary.json: SPS counts the "
        "environment steps of all seeds per second of training, compile excluded; compile is "
        "`compile_seconds`, the time the run waits for compilation; run wall is "
        "`wall_seconds`, from `main` to the end. Process is the whole `python` process, "
        "imports included. Env-only SPS: the same environments with random actions, in the "
        "same scan (the file's environments and steps per update) and the same sharding of "
        "the seeds over the devices (CPU cores), no network; the training / env-only column "
        "is the fraction of it that training reaches. Cores busy with other work: the median "
        "over the runs of the average number of cores that other processes (or the hypervisor) "
        "kept busy while the run's process ran, from /proc/stat; near 0 on an idle machine, "
        "and a row where it is not was slowed down.\n\n"
        + common.markdown_table(header, rows) + "\n"
        + "".join(f"End to end, `python algos/{algo}.py --env {cli.env}{timesteps_flag}` as a "
                  f"user waits for it: median {statistics.median(times):.1f} s over "
                  f"{len(times)} runs (min {min(times):.1f}, max {max(times):.1f}).\n"
                  for algo, times in end_to_end.items()))
    common.write_text(cli.out or common.results_dir(cli.algo) / "speed.md", text)


if __name__ == "__main__":
    main()
