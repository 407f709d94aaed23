"""Helpers shared by the benchmark scripts: run an algorithm's command line and read what it
wrote (summary.json, TensorBoard events), describe the machine, write markdown. Loading an
algorithm file as a module (load_algo) and reading event files (read_events) come from
tools/algo_files.py, which the tests use too.
"""

import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np

REPO = Path(__file__).resolve().parents[2]
# Loading an algorithm file as a module and reading event files, shared with the tests.
sys.path.insert(0, str(REPO / "tools"))
from algo_files import load_algo, read_events  # noqa: E402

BENCHMARKS = Path(__file__).resolve().parent
RESULTS = BENCHMARKS / "results"
LOG_DIR = BENCHMARKS / "runs"  # git ignores every runs/ folder


class Run(NamedTuple):
    summary: dict  # summary.json of the run
    run_dir: Path
    process_seconds: float  # the whole `python algos/<algo>.py` process, as a user waits for it


def run_algo(algo: str, env: str, num_seeds: int = 1, total_timesteps: int | None = None,
             flags: tuple[str, ...] = (), log_dir: Path = LOG_DIR, track: bool = True,
             compile_cache: bool = False, env_vars: dict | None = None) -> Run:
    """Runs `python algos/<algo>.py` (algo: "ppo", "a2c", ...) in a subprocess, with env_vars
    added to its environment, and returns what it wrote. Without compile_cache, with
    --no-compile-cache: every run compiles, so that compile seconds and whole-process times
    are those of a first run."""
    log_dir = Path(log_dir).resolve()
    log_dir.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, str(REPO / "algos" / f"{algo}.py"), "--env", env,
               "--num-seeds", str(num_seeds), "--log-dir", str(log_dir), *flags]
    if total_timesteps is not None:
        command += ["--total-timesteps", str(total_timesteps)]
    if not track:
        command.append("--no-track")
    if not compile_cache:
        command.append("--no-compile-cache")
    before = set(log_dir.iterdir())
    start = time.perf_counter()
    process = subprocess.run(command, cwd=REPO, capture_output=True, text=True,
                             env={**os.environ, **(env_vars or {})})
    process_seconds = time.perf_counter() - start
    shown = " ".join(command[1:]).replace(str(REPO) + os.sep, "")
    if process.returncode != 0:
        raise RuntimeError(f"`{shown}` exited with {process.returncode}:\n"
                           f"{process.stdout[-2000:]}{process.stderr[-2000:]}")
    # The run folder is named {env}__{algo}__{seed}__{second it started}, so find it as the
    # new one of this env and algo (other scripts may run other algorithms meanwhile).
    new = [d for d in set(log_dir.iterdir()) - before
           if d.name.startswith(f"{env}__{algo}__") and (d / "summary.json").is_file()]
    if len(new) != 1:
        raise RuntimeError(f"expected one new run folder in {log_dir} after `{shown}`, found {new}")
    summary = load_json(new[0] / "summary.json")
    last_line = process.stdout.strip().splitlines()[-1]
    print(f"  {shown}\n    {last_line} | process {process_seconds:.1f} s", flush=True)
    return Run(summary, new[0], process_seconds)


def results_dir(algo: str) -> Path:
    """The folder of an algorithm's tables and plots: results/<algo>/, except ppo's, which came
    first and lie in results/."""
    return RESULTS if algo == "ppo" else RESULTS / algo


def load_json(path: Path):
    with open(path) as f:
        return json.load(f)


def save_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        json.dump(data, f, indent=2)


# ---------------------------------------------------------------------------------------------
# TensorBoard events (read with algo_files.read_events, without TensorFlow or TensorBoard).


def seed_curves(run_dir: Path, tag: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A tag over the seeds of a run: (steps, mean, std, number of seeds) at each logged step.
    A seed with no finished episode in a chunk logs nothing there and is left out of that point."""
    curves = [read_events(d).get(tag, {}) for d in sorted(Path(run_dir).glob("seed_*"))]
    steps = np.array(sorted(set().union(*curves)))
    per_step = [np.array([c[s] for c in curves if s in c]) for s in steps]
    return (steps, np.array([v.mean() for v in per_step]), np.array([v.std() for v in per_step]),
            np.array([len(v) for v in per_step]))


# ---------------------------------------------------------------------------------------------
# Machine and markdown.


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> str:
    """One line naming where the numbers were taken. Asks JAX for its backend in this process,
    which the benchmark subprocesses share."""
    import jax

    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (f"{cpu_model()}, {os.cpu_count()} cores, {platform.system()}, Python "
            f"{platform.python_version()}, jax {jax.__version__} ({jax.default_backend()}), {date}")


def mean_std(values, digits: int = 1) -> str:
    values = np.asarray([v for v in values if v is not None], dtype=float)
    if values.size == 0:
        return "n/a"
    return f"{values.mean():.{digits}f} ± {values.std():.{digits}f}"


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    report_written(path)


def report_written(path: Path) -> None:
    print(f"wrote {shown_path(path)}", flush=True)


def shown_path(path: Path) -> str:
    """Relative to the repository when inside it."""
    path = Path(path).resolve()
    return str(path.relative_to(REPO) if path.is_relative_to(REPO) else path)
