"""Run the benchmark suite on a GPU: python benchmarks/run.py [--ops norm,attention] [--quick] [--match RE] [--budget-s S] [--out DIR]

Discovers every module in benchmarks/ops/ and benchmarks/models/ that defines ``cases()``,
measures the copy-bandwidth and bf16-matmul ceilings once, times every case with do_bench, and
writes results.json (long format), results.md and PNG plots to the output folder.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import pkgutil
import re
import signal
import sys
import time
from typing import Optional

STARTED = time.monotonic()  # --budget-s counts from here: imports and the ceilings take their share

import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import harness  # noqa: E402


def discover(selected: set[str] | None):
    for package in ("ops", "models"):
        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), package)
        for info in pkgutil.iter_modules([path]):
            if selected and info.name not in selected:
                continue
            module = importlib.import_module(f"benchmarks.{package}.{info.name}")
            if hasattr(module, "cases"):
                yield info.name, module


def backend_order(records) -> dict[str, list[str]]:
    """Per op, our kernel backends by the geometric mean of their time over the cases both ran."""
    order = {}
    for op in sorted({r.op for r in records}):
        times: dict[str, dict] = {}
        for r in records:
            if r.op == op and r.median and r.provider.startswith("vtkernels-"):
                times.setdefault(r.provider.removeprefix("vtkernels-"), {})[(r.shape, r.mode)] = r.median
        if len(times) < 2:
            continue
        common = set.intersection(*(set(t) for t in times.values()))
        if not common:
            continue
        score = {b: math.exp(sum(math.log(t[c]) for c in common) / len(common)) for b, t in times.items()}
        order[op] = sorted(score, key=score.get)
    return order


def update_preferences(records, env) -> None:
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "vtkernels", "preferences.json")
    with open(path) as f:
        prefs = json.load(f)
    prefs["ops"].update(backend_order(records))
    prefs["measured_on"] = f"{env['gpu']}, torch {env['torch']}, triton {env['triton']}"
    with open(path, "w") as f:
        json.dump(prefs, f, indent=2)
        f.write("\n")
    print(f"backend preferences written to {path}: {prefs['ops']}")


def collect_cases(ops: Optional[str], quick: bool, match: Optional[str]) -> list:
    """The cases of the named benchmark modules (comma-separated; None: all) whose 'op shape mode
    provider' matches ``match``; a module whose cases() fails is reported and left out."""
    cases = []
    for name, module in discover(set(ops.split(",")) if ops else None):
        try:
            cases.extend(module.cases(quick=quick))
        except Exception as exc:  # noqa: BLE001 - one broken module must not stop the suite
            print(f"benchmarks.{name}: cases() failed: {type(exc).__name__}: {exc}")
    if match:
        pattern = re.compile(match)
        cases = [c for c in cases if pattern.search(f"{c.op} {c.shape} {c.mode} {c.provider}")]
    return cases


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", help="comma-separated module names (default: all)")
    parser.add_argument("--quick", action="store_true", help="one shape per op")
    parser.add_argument("--out", help="output folder (default benchmarks/results/<date>_<gpu>)")
    parser.add_argument("--match", help="regular expression: run only cases whose 'op shape mode provider' matches")
    parser.add_argument("--budget-s", type=float,
                        help="start no case after this many seconds from the start (for machines with a per-call "
                             "time limit); a SIGTERM still writes what was measured")
    parser.add_argument("--update-preferences", action="store_true",
                        help="write the measured fastest kernel backend per op to vtkernels/preferences.json")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("benchmarks need a CUDA GPU; none found (run `python -m vtkernels selfcheck` for a CPU check)")
        return 2
    env = harness.environment()
    print(f"GPU {env['gpu']}, torch {env['torch']}, triton {env['triton']}")
    ceilings = {"copy_bytes_per_s": harness.measure_copy_bandwidth(),
                "matmul_flops_per_s": harness.measure_matmul_flops()}
    print(f"copy {ceilings['copy_bytes_per_s'] / 1e12:.2f} TB/s, bf16 matmul {ceilings['matmul_flops_per_s'] / 1e12:.0f} TFLOP/s")
    cases = collect_cases(args.ops, args.quick, args.match)
    out = args.out or harness.default_out_dir(env)
    os.makedirs(out, exist_ok=True)
    log_path = os.path.join(out, "records.jsonl")
    if os.path.exists(log_path):
        os.remove(log_path)
    budget = None if args.budget_s is None else args.budget_s - (time.monotonic() - STARTED)
    signal.signal(signal.SIGTERM, _interrupt)  # a time limit's kill: keep what was measured
    try:
        records = harness.run_cases(cases, ceilings, env, budget_s=budget, log_path=log_path)
    except KeyboardInterrupt:
        print("\ninterrupted: writing the records measured so far")
        records = harness.read_records(log_path)
    harness.write_results(records, ceilings, env, out)
    print(harness.markdown_table(records, ceilings, env))
    print(f"results written to {out}")
    if args.update_preferences:
        update_preferences(records, env)
    return 0


if __name__ == "__main__":
    sys.exit(main())
