"""What JAX's persistent compilation cache saves on a rerun of the README's command.

For each algorithm file, runs `python algos/<algo>.py --env CartPole-v1` (the defaults) twice
with a compilation cache folder of its own that starts empty: the first run compiles and fills
it, the second loads its programs from it (what a user sees on the second run of the same
configuration; the files keep their cache in ~/.cache/single-file-rl/jax by default). Each pair
is repeated --repeats times, each time with a new empty folder, the algorithms interleaved;
writes results/compile_cache.md with the medians of compile seconds and of the whole process's
wall time.

    python docs/benchmarks/compile_cache.py                      # all six files, 3 repeats
    python docs/benchmarks/compile_cache.py --algos ppo --repeats 1 --total-timesteps 20480 \\
        --out /tmp/compile_cache.md                              # smoke test
"""

import argparse
import statistics
import tempfile
from pathlib import Path

import common

ALGOS = ("ppo", "a2c", "dqn", "c51", "qr_dqn", "pqn")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algos", nargs="+", default=list(ALGOS), choices=ALGOS)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--total-timesteps", type=int, default=None,
                        help="steps per run (default: each file's own)")
    parser.add_argument("--out", type=Path, default=common.RESULTS / "compile_cache.md")
    cli = parser.parse_args()

    runs = {algo: {"first": [], "second": []} for algo in cli.algos}
    for repeat in range(cli.repeats):
        for algo in cli.algos:  # interleaved, so that a slow spell hits every file
            print(f"{algo}: repeat {repeat + 1} of {cli.repeats}", flush=True)
            with tempfile.TemporaryDirectory() as cache:
                for which in ("first", "second"):
                    runs[algo][which].append(common.run_algo(
                        algo, "CartPole-v1", total_timesteps=cli.total_timesteps, track=False,
                        compile_cache=True, env_vars={"JAX_COMPILATION_CACHE_DIR": cache}))

    def median(algo, which, field):
        values = [r.process_seconds if field == "process" else r.summary[field]
                  for r in runs[algo][which]]
        return statistics.median(values)

    rows = []
    for algo in cli.algos:
        first_compile, second_compile = (median(algo, w, "compile_seconds") for w in ("first", "second"))
        first_process, second_process = (median(algo, w, "process") for w in ("first", "second"))
        rows.append([f"`{algo}.py`", f"{first_compile:.1f}", f"{second_compile:.1f}",
                     f"{first_process:.1f}", f"{second_process:.1f}",
                     f"{1 - second_process / first_process:.0%}"])
    text = (f"# The compilation cache on a rerun\n\n{common.machine()}\n\n"
            f"`python algos/<algo>.py --env CartPole-v1` (defaults), run twice with a cache folder "
            f"that starts empty, medians of {cli.repeats} such pairs, the files interleaved "
            f"(`python docs/benchmarks/compile_cache.py`). Process seconds: the whole process, "
            f"imports, compilation, training and evaluation, as a user waits for it.\n\n"
            + common.markdown_table(["file", "compile s, first run", "compile s, second run",
                                     "process s, first run", "process s, second run",
                                     "process time saved"], rows))
    common.write_text(cli.out, text)


if __name__ == "__main__":
    main()
