"""Resuming an interrupted PBRF: a run killed with SIGKILL at 40% of its time, then rerun.

A 48-point PBRF of a small skorch MLP (digits, 64-16-10 tanh, 30 epochs of SGD) with the
estimator's defaults and ``memory``, in fresh processes:

1. the uninterrupted run (its own memory);
2. the same run in a new memory, killed with SIGKILL at 40% of the uninterrupted run's
   ``PBRF.fit`` time, counted from the start of its ``fit`` (after the imports);
3. the rerun with that memory, to the end.

The table gives, per repeat and their median, the uninterrupted and rerun wall times of
``fit`` (the PBRF's time: the net's training, the automatic settings and the chunks) and of
the whole process (interpreter start and imports included, which no cache can save), their
ratios, and whether the rerun's parameters equal the uninterrupted run's bitwise. The ideal
``fit`` ratio is 0.6 (the work left at 40%) plus what a rerun must redo: the chunk that was
running at the kill and the loading of the saved fit, settings and chunks.

    python benchmarks/bench_resume.py [--repeats 3] [--threads 1]
"""

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

WORKER = """
import json, sys, time
start = time.time()
import numpy as np
from sklearn.datasets import load_digits
sys.path.insert(0, {here!r})
from _shared import sgd_tanh_net
from sklearn_influence import PBRF

X, y = load_digits(return_X_y=True)
X, y = (X[:{n_train}] / 16).astype(np.float32), y[:{n_train}].astype(np.int64)
cpu_start = time.process_time()
print(cpu_start, flush=True)  # the parent counts the kill's CPU time from here
fit_start = time.time()
pbrf = PBRF(sgd_tanh_net(hidden={hidden}), n_points=48, memory=sys.argv[1], random_state=0)
pbrf.fit(X, y)
np.save(sys.argv[2], pbrf.parameters_)
print(json.dumps({{"fit": time.time() - fit_start, "cpu": time.process_time() - cpu_start,
                  "converged": int(pbrf.converged_.sum())}}))
"""


def _cpu_seconds(pid):
    """CPU time (user + system) of a running process, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _run(code, memory, output, env, kill_after=None):
    """Wall time of a fresh process (and its JSON line), or None when killed."""
    start = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-c", code, str(memory), str(output)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    if kill_after is not None:
        cpu_start = float(process.stdout.readline())  # the imports are done
        while _cpu_seconds(process.pid) - cpu_start < kill_after:
            if process.poll() is not None:
                raise RuntimeError("the run finished before the kill; raise the problem size")
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.wait()
        return None
    out, _ = process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"the run failed with status {process.returncode}")
    return time.perf_counter() - start, json.loads(out.strip().splitlines()[-1])


def repeat(code, folder, env):
    import numpy as np

    full_time, full = _run(code, folder / "full", folder / "full.npy", env)
    _run(code, folder / "resumed", folder / "never.npy", env, kill_after=0.4 * full["cpu"])
    chunks = len(list((folder / "resumed").rglob("_run_chunk/*/output.pkl")))
    rerun_time, rerun = _run(code, folder / "resumed", folder / "resumed.npy", env)
    equal = bool(np.array_equal(np.load(folder / "full.npy"), np.load(folder / "resumed.npy")))
    return {
        "full": full_time, "rerun": rerun_time, "full_fit": full["fit"],
        "rerun_fit": rerun["fit"], "full_cpu": full["cpu"], "rerun_cpu": rerun["cpu"],
        "equal": equal, "chunks_at_kill": chunks,
        "converged": full["converged"],
    }  # fmt: skip


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--n-train", type=int, default=150)
    parser.add_argument("--hidden", type=int, default=16)
    args = parser.parse_args()
    sys.path.insert(0, str(HERE))
    from _shared import environment, report

    env = dict(os.environ)
    root = str(HERE.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    if args.threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(args.threads)
    code = WORKER.format(here=str(HERE), n_train=args.n_train, hidden=args.hidden)
    header = environment(args.threads)
    rows = []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as folder:
            rows.append(repeat(code, Path(folder), env))
        print(rows[-1], flush=True)
    load_after = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")

    def line(name, r, ratios):
        return (
            f"| {name} | {r['full_cpu']:.1f} | {r['rerun_cpu']:.1f} | {ratios[0]:.2f} | "
            f"{r['full_fit']:.1f} | {r['rerun_fit']:.1f} | {ratios[1]:.2f} | "
            f"{r['full']:.1f} | {r['rerun']:.1f} | {ratios[2]:.2f} | "
            f"{r['chunks_at_kill']:g}/20 | {'yes' if r['equal'] else 'NO'} |"
        )

    pairs = (("full_cpu", "rerun_cpu"), ("full_fit", "rerun_fit"), ("full", "rerun"))
    ratios = [[r[b] / r[a] for a, b in pairs] for r in rows]
    keys = [key for pair in pairs for key in pair] + ["chunks_at_kill"]
    median = {key: statistics.median(r[key] for r in rows) for key in keys}
    median["equal"] = all(r["equal"] for r in rows)
    table = [line(str(i + 1), r, q) for i, (r, q) in enumerate(zip(rows, ratios, strict=True))]
    table.append(line("median", median, [statistics.median(q) for q in zip(*ratios, strict=True)]))
    text = "\n".join(
        [
            "# Resuming a PBRF killed at 40% of its time",
            "",
            f"48 removed points, skorch MLP 64-{args.hidden}-10 (tanh) on {args.n_train} "
            "digits, PBRF defaults + `memory`, random_state=0; SIGKILL once the run has spent "
            "40% of the uninterrupted `PBRF.fit` CPU time (counted from the start of `fit`), "
            "then a rerun with the same `memory`. Seconds; fit = `PBRF.fit` (the net's "
            "training, the settings, the chunks): its CPU time (one thread: the work, "
            "whatever the load) and wall time; process = a fresh interpreter, imports "
            "included (wall).",
            "",
            *header,
            f"* load average at the end {load_after:.2f}",
            f"* converged points of the uninterrupted run: {rows[0]['converged']}/48",
            "",
            "| run | fit CPU, uninterrupted | rerun | ratio | fit wall, uninterrupted | rerun "
            "| ratio | process wall, uninterrupted | rerun | ratio | chunks saved at kill "
            "| bitwise equal |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
            *table,
            "",
            "The median row's ratios are the medians of the per-run ratios.",
            "",
        ]
    )
    report(text, HERE / "results" / "bench_resume.md")


if __name__ == "__main__":
    main()
