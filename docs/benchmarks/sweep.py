"""Which settings of ppo.py (or another algorithm, --algo) reach a target greedy return on one
environment within a budget.

Runs each variant of VARIANTS[algo] (flags beyond the algorithm's defaults), all seeds in one
run of the command line as returns.py does, and writes sweep_<env>.md into the algorithm's
results folder (common.results_dir): greedy eval return per variant, mean ± std over seeds,
its worst seed, and whether the mean reaches --target. Results are kept in sweep_<env>.json
there, so running some variants again updates their rows only.
The variants that reach the target can then go into returns.py's SETTINGS.

    python docs/benchmarks/sweep.py                                   # ppo, Acrobot-v1, >= -80
    python docs/benchmarks/sweep.py --variants 0 3 --seeds 5 --seed 1
    python docs/benchmarks/sweep.py --algo a2c --env CartPole-v1 --target 495 --seeds 8
"""

import argparse
from pathlib import Path

import common
import returns

# Documented variations of the CleanRL / PureJaxRL defaults: more parallel environments with
# shorter or equal rollouts, no entropy bonus, a larger learning rate, and gymnax-blines' config.
PPO_VARIANTS = [
    (),
    ("--num-envs", "16", "--num-steps", "32"),
    ("--num-envs", "16", "--num-steps", "64"),
    ("--num-envs", "32", "--num-steps", "32"),
    ("--ent-coef", "0.0"),
    ("--learning-rate", "1e-3"),
    ("--num-envs", "16", "--num-steps", "32", "--learning-rate", "1e-3"),
    ("--num-envs", "16", "--num-steps", "32", "--ent-coef", "0.0"),
    ("--learning-rate", "1e-3", "--ent-coef", "0.0"),
    # gymnax-blines' agents/Acrobot-v1/ppo.yaml (its -78.9 at 500k steps), less its lr warmup.
    ("--num-envs", "16", "--num-steps", "32", "--learning-rate", "5e-4", "--no-anneal-lr",
     "--max-grad-norm", "1.0"),
]

# A2C: the number of environments (RL Zoo: 8 for CartPole-v1, 16 for Acrobot-v1) and the
# entropy bonus (RL Zoo: 0; ppo.py: 0.01), both stated so that a row keeps its meaning if a
# default changes.
A2C_VARIANTS = [("--num-envs", num_envs, "--ent-coef", ent_coef)
                for num_envs in ("8", "16", "32") for ent_coef in ("0.0", "0.01")]

# The value-based family: filled in by each file's own search (see its docs page).
DQN_VARIANTS = [
    (),
    ("--double-q",),
    ("--learning-rate", "1e-3"),
    ("--target-network-frequency", "1000"),
    ("--exploration-fraction", "0.2"),
    ("--train-frequency", "5"),
    ("--buffer-size", "50000"),
    ("--double-q", "--target-network-frequency", "1000"),
    ("--huber-delta", "10"),
    ("--huber-delta", "1"),
    # RL Zoo's tuned DQN (hyperparams/dqn.yml) as far as these flags go (its networks are
    # 256-256): Acrobot-v1 (one gradient step per 2 steps here, per step there) ...
    returns.DQN_ACROBOT_FLAGS,
    # ... and MountainCar-v0 (one gradient step per 2 steps, as there).
    ("--train-frequency", "2", "--learning-rate", "4e-3", "--gamma", "0.98",
     "--learning-starts", "1000", "--target-network-frequency", "600",
     "--exploration-fraction", "0.2", "--end-e", "0.07"),
    ("--learning-rate", "1e-3", "--double-q"),
    # MountainCar-v0 again, with the RL Zoo's exploration length (0.2 of its 120k steps)
    returns.RL_ZOO_MOUNTAINCAR_FLAGS,
    (*returns.RL_ZOO_MOUNTAINCAR_FLAGS, "--double-q"),
    # ... and at a quarter of its learning rate (what c51.py needed there)
    returns.DQN_MOUNTAINCAR_FLAGS,
]

# C51: its defaults; then for MountainCar-v0 the RL Zoo's DQN settings there (returns.py), on
# the 51 atoms of [-100, 0] that the returns can reach.
C51_VARIANTS = [
    (),
    ("--n-atoms", "51", "--v-min", "-100", "--v-max", "0", *returns.RL_ZOO_MOUNTAINCAR_FLAGS),
    # ... with a quarter of its learning rate (4e-3 is 16 times C51's usual 2.5e-4), and with
    # that on the [-50, 0] that returns discounted by 0.98 reach (atoms 1 apart). Near-uniform
    # initial logits value every state at the support's middle: -50 on [-100, 0], which is
    # what never reaching the flag is worth at gamma 0.98 (no optimism to explore with), -25
    # on [-50, 0], and 0 on [-50, 50] (dqn.py's networks start near 0 too).
    ("--n-atoms", "51", "--v-min", "-100", "--v-max", "0", *returns.DQN_MOUNTAINCAR_FLAGS),
    ("--n-atoms", "51", "--v-min", "-50", "--v-max", "0", *returns.DQN_MOUNTAINCAR_FLAGS),
    ("--n-atoms", "51", "--v-min", "-50", "--v-max", "50", *returns.DQN_MOUNTAINCAR_FLAGS),
]
# QR-DQN: its defaults first; then the paper's kappa of 1 (diverged on CartPole-v1, see
# docs/qr_dqn.md), a larger learning rate, the RL Zoo's 10 quantiles of CartPole-v1, a larger
# buffer; for MountainCar-v0 the RL Zoo's tuned hyperparameters (hyperparams/qrdqn.yml) that our
# flags express.
QR_DQN_VARIANTS = [
    (),
    ("--huber-param", "1"),
    ("--learning-rate", "1e-3"),
    ("--n-quantiles", "10"),
    ("--double-q",),
    ("--buffer-size", "100000"),
    ("--gamma", "0.98", "--learning-rate", "4e-3", "--target-network-frequency", "600",
     "--exploration-fraction", "0.2", "--end-e", "0.07"),
    # MountainCar-v0: the RL Zoo's DQN settings there (returns.py), with double Q-learning, or
    # with the paper's kappa of 1 (the returns here stay within [-50, 0], so kappa 10 is nearly
    # the squared error)
    (*returns.RL_ZOO_MOUNTAINCAR_FLAGS, "--double-q"),
    (*returns.RL_ZOO_MOUNTAINCAR_FLAGS, "--huber-param", "1"),
    (*returns.RL_ZOO_MOUNTAINCAR_FLAGS, "--huber-param", "1", "--double-q"),
    # ... and kappa 1 at a quarter of the learning rate, as for c51.py
    (*returns.DQN_MOUNTAINCAR_FLAGS, "--huber-param", "1"),
]
# PQN: its defaults (lambda 0.8); CleanRL's pqn.py defaults (lambda 0.65, epsilon to 0.05 over
# half of training, lr 2.5e-4), the lambda that let CartPole-v1 fall late here; PureJaxQL's
# gymnax configuration's lambda 0.95 and shorter exploration (0.2), and a larger learning rate.
# Every variant states its lambda, so that its rows keep their meaning (the default was 0.65
# until 2026-12-05).
PQN_VARIANTS = [
    (),
    ("--q-lambda", "0.65"),
    ("--q-lambda", "0.5"),
    ("--q-lambda", "0.95"),
    ("--q-lambda", "0.65", "--learning-rate", "1e-3"),
    ("--q-lambda", "0.95", "--learning-rate", "1e-3"),
    ("--q-lambda", "0.65", "--exploration-fraction", "0.2"),
    ("--q-lambda", "0.95", "--exploration-fraction", "0.2"),
    ("--q-lambda", "0.95", "--learning-rate", "1e-3", "--exploration-fraction", "0.2"),
    # MountainCar-v0: a still larger rate, and with it the RL Zoo's DQN settings for it
    # (gamma 0.98, epsilon to 0.07 over 0.2 of training)
    ("--q-lambda", "0.95", "--learning-rate", "4e-3"),
    ("--q-lambda", "0.95", "--learning-rate", "4e-3", "--gamma", "0.98",
     "--exploration-fraction", "0.2", "--end-e", "0.07"),
    # MountainCar-v0, where each seed finds the flag or never does: the same 2,048 steps per
    # update from more environments (more places explored at once), CleanRL's lambda at the
    # larger rate, and a larger rate still
    ("--q-lambda", "0.95", "--learning-rate", "4e-3", "--num-envs", "128", "--num-steps", "16"),
    ("--q-lambda", "0.95", "--learning-rate", "4e-3", "--num-envs", "256", "--num-steps", "8"),
    ("--q-lambda", "0.65", "--learning-rate", "4e-3"),
    ("--q-lambda", "0.95", "--learning-rate", "1e-2"),
]

# Continuous PPO: its defaults (CleanRL's ppo_continuous_action on 8 environments, with an
# entropy bonus of 0.01), CleanRL's bonus of 0, a shorter horizon, and gymnax-blines' batch (32
# environments x 16 steps, 4 x 4 minibatch steps, constant 5e-4). Shorter budgets, over which
# the learning rate anneals sooner, are rows of their own (--total-timesteps).
PPO_CONTINUOUS_VARIANTS = [
    (),
    ("--ent-coef", "0.0"),
    ("--gamma", "0.95"),
    ("--num-envs", "32", "--num-steps", "16", "--num-minibatches", "4", "--update-epochs", "4",
     "--learning-rate", "5e-4", "--no-anneal-lr", "--max-grad-norm", "1.0"),
]

VARIANTS = {"ppo": PPO_VARIANTS, "a2c": A2C_VARIANTS, "dqn": DQN_VARIANTS, "c51": C51_VARIANTS,
            "qr_dqn": QR_DQN_VARIANTS, "pqn": PQN_VARIANTS,
            "ppo_continuous": PPO_CONTINUOUS_VARIANTS}


def render(algo: str, env: str, target: float, results: dict) -> str:
    def reaches(values) -> str:
        return "yes" if sum(values) / len(values) >= target else "no"

    rows, pooled = [], {}  # pooled: the seeds of every --seed, per (steps, flags)
    for r in sorted(results.values(),
                    key=lambda r: (r["steps"], VARIANTS[algo].index(tuple(r["flags"])),
                                   r["seed"])):
        flags, values = " ".join(r["flags"]) or "defaults", r["eval_returns"]
        rows.append([flags, r["seed"], f"{r['steps']:,}", r["seeds"], common.mean_std(values),
                     f"{min(values):.1f}", reaches(values), f"{r['sps']:,.0f}",
                     f"{r['process_seconds']:.0f}"])
        pooled.setdefault((r["steps"], flags), []).extend(values)
    pooled_rows = [[flags, f"{steps:,}", len(values), common.mean_std(values), reaches(values)]
                   for (steps, flags), values in pooled.items()]
    machines = sorted({r["machine"].rsplit(", ", 1)[0] for r in results.values()})
    return (
        f"# {algo.upper()} settings on {env}: greedy return >= {target:g}?\n\n"
        "Generated by `python docs/benchmarks/sweep.py"
        + ("" if algo == "ppo" else f" --algo {algo}")
        + f"`. Each row is one run of `algos/{algo}.py` "
        f"training all seeds at once, with `--num-chunks {returns.NUM_CHUNKS}` and the flags "
        "listed, otherwise defaults. Greedy eval: each seed's mean return over "
        "`--eval-episodes` greedy episodes at the end; mean ± std and the worst over seeds.\n\n"
        + common.markdown_table(["flags", "--seed", "steps / seed", "seeds", "greedy eval return",
                                 "worst seed", f">= {target:g}", "SPS", "wall s"], rows)
        + "\nPooled over the runs with different `--seed` above:\n\n"
        + common.markdown_table(["flags", "steps / seed", "seeds", "greedy eval return",
                                 f"mean >= {target:g}"], pooled_rows)
        + "\nMeasured on " + "; ".join(machines) + ".\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--algo", default="ppo", choices=list(VARIANTS))
    parser.add_argument("--env", default="Acrobot-v1")
    parser.add_argument("--target", type=float, default=-80.0)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0,
                        help="--seed of the runs: another value gives an independent set of "
                        "seeds")
    parser.add_argument("--total-timesteps", type=int, default=500_000, help="steps per seed")
    parser.add_argument("--variants", type=int, nargs="+", default=None,
                        help="indices into VARIANTS[algo] (default all)")
    parser.add_argument("--out", type=Path, default=None,
                        help="markdown file (default sweep_<env>.md in the algorithm's results)")
    parser.add_argument("--log-dir", type=Path, default=common.LOG_DIR / "sweep")
    cli = parser.parse_args()

    if cli.env not in returns.SETTINGS[cli.algo]:
        parser.error(f"--env: {cli.algo} has settings for "
                     f"{', '.join(returns.SETTINGS[cli.algo])} only")
    variants = VARIANTS[cli.algo]
    out = cli.out or common.results_dir(cli.algo) / f"sweep_{cli.env}.md"
    steps = cli.total_timesteps
    results_path = out.with_suffix(".json")
    results = common.load_json(results_path) if results_path.is_file() else {}
    for index in cli.variants or range(len(variants)):
        flags = variants[index]
        print(f"{cli.env} [{index}] {' '.join(flags) or 'defaults'}, --seed {cli.seed}: "
              f"{cli.seeds} seeds x {steps:,} steps", flush=True)
        result = returns.benchmark(cli.algo, cli.env, cli.seeds, steps, flags, cli.log_dir,
                                   cli.seed)
        del result["curve"]
        results[f"{' '.join(flags)} --seed {cli.seed} --total-timesteps {steps}"] = result
        common.save_json(results_path, results)
    common.write_text(out, render(cli.algo, cli.env, cli.target, results))


if __name__ == "__main__":
    main()
