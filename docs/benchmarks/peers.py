"""Speed of our algorithms against the same algorithm and configuration in rejax, side by side.

For each algorithm in --algos and each seed count in --seeds, runs our command line
(`python algos/ppo.py --env CartPole-v1 --num-seeds N`, in this environment) and rejax (the
same configuration, in the rejax environment, by peers_rejax_runner.py in a subprocess),
interleaved, ours then rejax, --repeats times, and writes results/peers.md with the medians:
training SPS (compile excluded), compile seconds and the wall time of the whole process as a
user waits for it. rejax gets the number of environment steps our run actually trained, and
shards the seeds over the CPU cores (one JAX device per core) as our command line does.

Install rejax's environment once, beside the project's (see README.md in this folder):

    python -m venv .venv-rejax && .venv-rejax/bin/pip install -r docs/benchmarks/requirements-rejax.txt

    python docs/benchmarks/peers.py                        # full: about 3 minutes on 2 cores
    python docs/benchmarks/peers.py --total-timesteps 20480 --repeats 1 --out /tmp/peers.md
                                                           # smoke test

A row is one entry of PEERS: our run and rejax's algorithm and configuration.
"""

import argparse
import dataclasses
import json
import statistics
import subprocess
import time
from pathlib import Path

import common

RUNNER = common.BENCHMARKS / "peers_rejax_runner.py"
REJAX_PYTHON = common.REPO / ".venv-rejax" / "bin" / "python"
# The XLA options of algos/ppo.py's compile_ahead on a CPU, for --peer-compile-options ours.
OUR_COMPILE_OPTIONS = {"xla_cpu_multi_thread_eigen": False, "xla_backend_optimization_level": 1}


@dataclasses.dataclass(frozen=True)
class Peer:
    algo: str  # our algos/<algo>.py, run with flags, against rejax.get_algo(algo)
    flags: tuple[str, ...]
    # Keyword arguments of rejax's Algorithm.create, beyond env and total_timesteps (set here to
    # the steps our run trained). peers_rejax_runner.py also reads "anneal_lr" and sets
    # eval_freq to total_timesteps (one evaluation, after training) unless given.
    rejax_config: dict
    notes: str = ""  # what differs between the two, beyond speed
    env: str = "CartPole-v1"
    rejax_name: str = ""  # rejax's name of the algorithm, when it is not ours

    @property
    def label(self) -> str:
        return self.algo.upper()

    @property
    def rejax_algo(self) -> str:
        return self.rejax_name or self.algo

    @property
    def our_command(self) -> str:
        """Shown on the page; N is the number of seeds."""
        return f"python algos/{self.algo}.py --env {self.env} --num-seeds N"


# algos/ppo.py's defaults, stated as flags so that the row keeps comparing this configuration
# if a default changes.
PPO_FLAGS = ("--num-envs", "4", "--num-steps", "128", "--update-epochs", "4",
             "--num-minibatches", "4", "--learning-rate", "2.5e-4", "--anneal-lr",
             "--gamma", "0.99", "--gae-lambda", "0.95", "--clip-coef", "0.2",
             "--ent-coef", "0.01", "--vf-coef", "0.5", "--max-grad-norm", "0.5")

# algos/dqn.py's defaults (PureJaxRL's DQN configuration), stated as flags.
DQN_FLAGS = ("--num-envs", "10", "--num-steps", "1", "--train-frequency", "10",
             "--buffer-size", "10000", "--batch-size", "128", "--learning-starts", "10000",
             "--learning-rate", "2.5e-4", "--target-network-frequency", "500", "--tau", "1.0",
             "--start-e", "1.0", "--end-e", "0.05", "--exploration-fraction", "0.5",
             "--gamma", "0.99", "--no-double-q")

# algos/pqn.py's defaults (CleanRL's pqn.py), stated as flags.
PQN_FLAGS = ("--num-envs", "32", "--num-steps", "64", "--update-epochs", "4",
             "--num-minibatches", "16", "--learning-rate", "2.5e-4", "--anneal-lr",
             "--q-lambda", "0.65", "--gamma", "0.99", "--max-grad-norm", "10",
             "--start-e", "1.0", "--end-e", "0.05", "--exploration-fraction", "0.5")

# algos/ppo_continuous.py's defaults, stated as flags.
PPO_CONTINUOUS_FLAGS = ("--num-envs", "8", "--num-steps", "256", "--update-epochs", "10",
                        "--num-minibatches", "32", "--learning-rate", "3e-4", "--anneal-lr",
                        "--gamma", "0.99", "--gae-lambda", "0.95", "--clip-coef", "0.2",
                        "--ent-coef", "0.01", "--vf-coef", "0.5", "--max-grad-norm", "0.5",
                        "--norm-obs", "--norm-reward")

# algos/td3.py's and algos/sac.py's defaults, stated as flags (the shared ones, then their own).
OFF_POLICY_FLAGS = ("--num-envs", "1", "--num-steps", "1", "--train-frequency", "1",
                    "--buffer-size", "1000000", "--batch-size", "256", "--learning-starts", "1000",
                    "--learning-rate", "1e-3", "--gamma", "0.99", "--tau", "0.005")
TD3_FLAGS = (*OFF_POLICY_FLAGS, "--policy-noise", "0.2", "--noise-clip", "0.5",
             "--exploration-noise", "0.1", "--policy-frequency", "2")
SAC_FLAGS = (*OFF_POLICY_FLAGS, "--autotune")
# rejax's SAC and TD3 configured as those defaults: one environment, one gradient step per
# step, 256-256 ReLU networks (rebuilt by the runner: rejax's TD3 fixes 64-64), a buffer of 1M,
# polyak = 1 - tau.
OFF_POLICY_REJAX_CONFIG = dict(
    num_envs=1, num_epochs=1, buffer_size=1_000_000, fill_buffer=1_000, batch_size=256,
    learning_rate=1e-3, gamma=0.99, polyak=0.995, hidden_layer_sizes=[256, 256])

# Neither side normalises observations or rewards.
RAW_INPUTS = dict(normalize_observations=False, normalize_rewards=False)

# rejax's PPO configured as algos/ppo.py's defaults; ppo_continuous's row changes what differs.
PPO_REJAX_CONFIG = dict(
    num_envs=4, num_steps=128, num_epochs=4, num_minibatches=4,
    learning_rate=2.5e-4, anneal_lr="per_update", max_grad_norm=0.5,
    gamma=0.99, gae_lambda=0.95, clip_eps=0.2, ent_coef=0.01, vf_coef=0.5,
    agent_kwargs={"activation": "tanh", "hidden_layer_sizes": [64, 64]}, **RAW_INPUTS)

PEERS = {
    "ppo": Peer(
        algo="ppo",
        flags=PPO_FLAGS,
        rejax_config=PPO_REJAX_CONFIG,
        notes=("rejax's PPO has separate actor and critic networks with an Adam each (eps "
               "1e-8), Flax's default initialisation, and `max_grad_norm` clips each gradient "
               "element (`optax.clip`) rather than the global norm; it has no annealing option, "
               "so its Adam is given the same linear schedule as ours."),
    ),
    "dqn": Peer(
        algo="dqn",
        flags=DQN_FLAGS,
        # num_epochs: gradient steps per iteration of num_envs steps; polyak 0: a copy.
        rejax_config=dict(
            num_envs=10, num_epochs=1, buffer_size=10_000, fill_buffer=10_000, batch_size=128,
            learning_rate=2.5e-4, target_update_freq=500, polyak=0.0, eps_start=1.0,
            eps_end=0.05, exploration_fraction=0.5, gamma=0.99, ddqn=False,
            agent_kwargs={"activation": "relu"}, hidden_layer_sizes=[120, 84],
            **RAW_INPUTS),
        notes=("rejax's DQN takes uniformly random actions until the buffer holds "
               "`fill_buffer` transitions (ours: epsilon-greedy from the start, epsilon near 1), "
               "uses the squared TD error as ours does by default, and has no gradient clipping "
               "here (`max_grad_norm` infinite)."),
    ),
    "pqn": Peer(
        algo="pqn",
        flags=PQN_FLAGS,
        rejax_config=dict(
            num_envs=32, num_steps=64, num_epochs=4, num_minibatches=16, td_lambda=0.65,
            learning_rate=2.5e-4, anneal_lr="per_update", max_grad_norm=10.0, eps_start=1.0,
            eps_end=0.05, exploration_fraction=0.5, gamma=0.99, hidden_layer_sizes=[120, 84],
            **RAW_INPUTS),
        notes=("rejax's PQN: LayerNorm and ReLU after each hidden layer as ours, Adam (ours: "
               "RAdam, as CleanRL's pqn.py), element-wise gradient clipping (`optax.clip`, ours: "
               "global norm), Flax's default initialisation; no annealing option, so its Adam "
               "is given the same linear schedule as ours."),
    ),
    "sac": Peer(
        algo="sac",
        env="Pendulum-v1",
        flags=SAC_FLAGS,
        rejax_config={**OFF_POLICY_REJAX_CONFIG, "agent_kwargs": {"activation": "relu"}},
        notes=("rejax's SAC: twin critics, a tanh-squashed Gaussian with log-std in [-10, 2] "
               "(ours [-5, 2]) whose log-probability leaves out the log of the action scale, "
               "the temperature tuned towards -|A| as ours, Flax's default initialisation, "
               "uniform random actions until `fill_buffer`; actor, critics and temperature "
               "every step as ours."),
    ),
    "td3": Peer(
        algo="td3",
        env="Pendulum-v1",
        flags=TD3_FLAGS,
        rejax_config={**OFF_POLICY_REJAX_CONFIG, "exploration_noise": 0.1, "target_noise": 0.2,
                      "target_noise_clip": 0.5, "policy_delay": 2,
                      "actor_kwargs": {"activation": "relu"},
                      "critic_kwargs": {"activation": "relu"}},
        notes=("rejax's TD3: twin critics, smoothing noise and delay as ours (its noises are "
               "scaled by the action range as ours), Flax's default initialisation, uniform "
               "random actions until `fill_buffer`; its episode ends at a time limit are "
               "terminal (ours bootstrap)."),
    ),
    "ppo_continuous": Peer(
        algo="ppo_continuous",
        rejax_name="ppo",
        env="Pendulum-v1",
        flags=PPO_CONTINUOUS_FLAGS,
        rejax_config={**PPO_REJAX_CONFIG, "num_envs": 8, "num_steps": 256, "num_epochs": 10,
                      "num_minibatches": 32, "learning_rate": 3e-4,
                      "normalize_observations": True, "normalize_rewards": True},
        notes=("rejax's PPO on a Box action space: a Gaussian policy with a state-independent "
               "log-std as ours, separate actor and critic with an Adam each, element-wise "
               "gradient clipping, observation and reward normalisation without clipping to "
               "[-10, 10], actions clipped to the environment's bounds; the same linear "
               "schedule as ours is given to its Adam."),
    ),
}


def run_rejax(python: Path, peer: Peer, num_seeds: int, total_timesteps: int,
              no_shard: bool, no_eval: bool, compile_options: dict) -> dict:
    """Runs peers_rejax_runner.py in the rejax environment -> its JSON line, plus the wall time
    of the whole process, measured here as common.run_algo measures ours."""
    config = {"env": peer.env, "total_timesteps": total_timesteps, **peer.rejax_config}
    command = [str(python), str(RUNNER), "--algo", peer.rejax_algo, "--config",
               json.dumps(config), "--num-seeds", str(num_seeds),
               "--compile-options", json.dumps(compile_options)]
    command += ["--no-shard"] * no_shard + ["--no-eval"] * no_eval
    start = time.perf_counter()
    process = subprocess.run(command, cwd=common.REPO, capture_output=True, text=True)
    process_seconds = time.perf_counter() - start
    if process.returncode != 0:
        raise RuntimeError(f"rejax runner exited with {process.returncode}:\n"
                           f"{process.stdout[-2000:]}{process.stderr[-3000:]}")
    result = json.loads(process.stdout.strip().splitlines()[-1])
    result["process_seconds"] = process_seconds
    print(f"  rejax {peer.rejax_algo}, {num_seeds} seeds x {result['steps']:,} steps on "
          f"{result['devices']} devices: SPS {result['sps']:,.0f} | compile "
          f"{result['compile_seconds']:.1f} s | process {process_seconds:.1f} s", flush=True)
    return result


def check_rejax_python(python: Path) -> None:
    if not Path(python).is_file():
        raise SystemExit(
            f"{python} not found: install rejax's environment first,\n  python -m venv "
            ".venv-rejax && .venv-rejax/bin/pip install -r docs/benchmarks/requirements-rejax.txt"
            "\nor pass --rejax-python")


def rejax_versions(python: Path) -> str:
    code = ("import importlib.metadata as m; print(', '.join(f'{p} ' + m.version(p) for p in "
            "('rejax', 'jax', 'gymnax', 'flax', 'optax')))")
    return subprocess.run([str(python), "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip()


def median(values) -> float:
    return statistics.median(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--algos", nargs="+", default=list(PEERS), choices=list(PEERS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--repeats", type=int, default=3, help="runs per row; medians reported")
    parser.add_argument("--total-timesteps", type=int, default=500_000,
                        help="steps per seed asked of our run (rejax gets what ours trained)")
    parser.add_argument("--rejax-python", type=Path, default=REJAX_PYTHON,
                        help="python of the rejax environment (requirements-rejax.txt)")
    parser.add_argument("--peer-no-shard", action="store_true",
                        help="rejax on one device, plain jit(vmap), instead of sharding seeds")
    parser.add_argument("--peer-eval", action="store_true",
                        help="keep rejax's evaluation, which runs inside its timed train call "
                             "(default: replaced by a no-op, so that its SPS, like ours, "
                             "counts training only)")
    parser.add_argument("--peer-compile-options", choices=["default", "ours"], default="default",
                        help="XLA options of rejax's compile: JAX's defaults, or algos/ppo.py's")
    parser.add_argument("--out", type=Path, default=common.RESULTS / "peers.md")
    parser.add_argument("--log-dir", type=Path, default=common.LOG_DIR / "peers")
    cli = parser.parse_args()
    check_rejax_python(cli.rejax_python)
    compile_options = OUR_COMPILE_OPTIONS if cli.peer_compile_options == "ours" else {}

    sections, raw = [], {}
    for name in cli.algos:
        peer = PEERS[name]
        rows = []
        for num_seeds in cli.seeds:
            print(f"{peer.label} on {peer.env}: {num_seeds} seeds, {cli.repeats} x (ours, rejax)",
                  flush=True)
            ours, theirs = [], []
            for _ in range(cli.repeats):  # interleaved, so that a slow spell hits both
                ours.append(common.run_algo(peer.algo, peer.env, num_seeds, cli.total_timesteps,
                                            flags=peer.flags, log_dir=cli.log_dir))
                theirs.append(run_rejax(cli.rejax_python, peer, num_seeds,
                                        ours[-1].summary["steps"], cli.peer_no_shard,
                                        not cli.peer_eval, compile_options))
            our_sps = median(r.summary["sps"] for r in ours)
            their_sps = median(r["sps"] for r in theirs)
            rows.append([
                num_seeds, f"{ours[0].summary['steps']:,}",
                f"{ours[0].summary['devices']} / {theirs[0]['devices']}",
                f"{our_sps:,.0f}", f"{their_sps:,.0f}", f"{our_sps / their_sps:.2f}",
                f"{median(r.summary['compile_seconds'] for r in ours):.1f} / "
                f"{median(r['compile_seconds'] for r in theirs):.1f}",
                f"{median(r.process_seconds for r in ours):.1f} / "
                f"{median(r['process_seconds'] for r in theirs):.1f}",
            ])
            raw[f"{name}/{num_seeds}"] = {
                "ours": [{k: r.summary.get(k) for k in ("sps", "compile_seconds", "wall_seconds",
                                                         "steps", "devices")}
                         | {"process_seconds": r.process_seconds} for r in ours],
                "rejax": theirs}
        sections.append(
            f"## {peer.label}, {peer.env}\n\n"
            f"Ours: `{peer.our_command}`. rejax: `rejax.get_algo(\"{peer.rejax_algo}\")"
            f".create(env=\"{peer.env}\", **config)` with config "
            f"`{json.dumps(peer.rejax_config)}`. {peer.notes}\n\n"
            + common.markdown_table(["seeds", "steps / seed", "devices ours / rejax",
                                     "ours SPS", "rejax SPS", "ours / rejax",
                                     "compile s ours / rejax", "process s ours / rejax"], rows))

    evaluation = ("replaced by a no-op" if not cli.peer_eval else
                  "`eval_freq` = the steps trained, so one evaluation (128 episodes of the "
                  "sampling policy, run to their end or 500 steps in a `while_loop`) after "
                  "training, inside the timed call; the initial evaluation skipped")
    sharding = ("plain `jit(vmap(train))` on one device" if cli.peer_no_shard else
                "`jit(vmap(train))` with the seed axis sharded over the CPU cores exposed as "
                "JAX devices, as our command line does (1 seed: one device)")
    text = (
        "# Speed against peers\n\n"
        f"Generated by `python docs/benchmarks/peers.py` on {common.machine()}. "
        f"rejax environment: {rejax_versions(cli.rejax_python)}.\n\n"
        f"Each row: median of {cli.repeats} runs each, interleaved (ours, rejax, ours, ...), "
        "each run a fresh process. SPS counts the environment steps of all seeds per second "
        "of training, compile excluded. Ours: from summary.json (`sps`, `compile_seconds`, the "
        "time the run waits for compilation), TensorBoard tracking on, as by default. rejax: "
        "`jit(...).lower(keys).compile()` timed as compile, then the compiled call until "
        f"`block_until_ready` as training; {sharding}; XLA options "
        f"{'of algos/ppo.py' if compile_options else 'JAX defaults'}; evaluation {evaluation}. "
        "rejax trains the steps our run trained (ours rounds --total-timesteps down to whole "
        "chunks). Process is the wall time of the whole `python` process, imports included, "
        "as a user waits for it, measured the same way for both.\n\n"
        + "\n".join(sections))
    common.write_text(cli.out, text)
    common.save_json(cli.out.with_suffix(".json"), raw)
    common.report_written(cli.out.with_suffix(".json"))


if __name__ == "__main__":
    main()
