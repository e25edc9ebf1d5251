"""Benchmark harness: cases, timing, hardware floors, long-format records, tables and plots.

An op's benchmark module (benchmarks/ops/<op>.py, benchmarks/models/<name>.py) defines
``cases(quick: bool) -> Iterable[BenchCase]``. Each case names its op, shape, mode and provider
and builds its own inputs lazily (``make()`` returns the zero-argument function to time), so a
failing or missing peer costs one record, not the run. Times come from
``triton.testing.do_bench`` (median, p20, p80 over repeats, after warm-up).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import platform
import sys
import time
from typing import Any, Callable, Optional

import torch

from benchmarks import targets


@dataclasses.dataclass
class BenchCase:
    op: str          # "layer_norm", "attention", ...
    shape: str       # human label, e.g. "ViT-B 256x197x768"
    mode: str        # "fwd", "bwd" or "fwd+bwd"
    provider: str    # "vtkernels-triton", "torch", "torch.compile", ...
    make: Callable[[], Callable[[], Any]]
    bytes: Optional[float] = None   # minimal bytes moved (floor = bytes / copy bandwidth)
    flops: Optional[float] = None   # useful FLOPs (floor = flops / bf16 matmul rate)
    baseline: str = "torch"         # provider the ratio is taken against
    dtype: str = "bf16"
    grad_to_none: Optional[Callable[[], list]] = None  # tensors whose .grad is reset between reps
    extra: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Record:
    op: str
    provider: str
    mode: str
    shape: str
    dtype: str
    metric: str
    median: Optional[float]
    p20: Optional[float]
    p80: Optional[float]
    tbps: Optional[float] = None
    tflops: Optional[float] = None
    pct_of_floor: Optional[float] = None
    ratio_vs_baseline: Optional[float] = None
    baseline: str = ""
    error: str = ""
    extra: dict = dataclasses.field(default_factory=dict)
    gpu: str = ""
    versions: dict = dataclasses.field(default_factory=dict)
    timestamp: str = ""


def environment() -> dict:
    import importlib.metadata

    import triton

    env = {"python": platform.python_version(), "torch": torch.__version__, "triton": triton.__version__,
           "cuda": torch.version.cuda or "none", "cudnn": str(torch.backends.cudnn.version()),
           "date": dt.date.today().isoformat()}
    for peer in ("timm", "transformers"):
        try:
            env[peer] = importlib.metadata.version(peer)
        except importlib.metadata.PackageNotFoundError:
            env[peer] = "not installed"
    env["gpu"] = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
    return env


# Calls slower than SLOW_CALL_MS (iGPT sampling, HF generate) are timed 3 times, not by do_bench
# (which would spend about eight calls on them); slower than 10x that, once.
SLOW_CALL_MS = 500.0


def _reset_grads(grad_to_none) -> None:
    for t in grad_to_none or ():
        t.grad = None


def timed_calls_ms(fn: Callable[[], Any], grad_to_none, calls: int) -> list[float]:
    """Milliseconds of each of ``calls`` calls of ``fn`` (CUDA events, gradients reset first)."""
    times = []
    for _ in range(calls):
        _reset_grads(grad_to_none)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return times


def time_ms(fn: Callable[[], Any], grad_to_none=None, warmup: int = 25, rep: int = 100) -> tuple[float, float, float]:
    """(median, p20, p80) milliseconds with triton.testing.do_bench, after one warm-up call (compiles,
    graph captures) and one timed call. Slow calls (SLOW_CALL_MS): (median, min, max) of 3 timed
    calls, or of the one past 10x that."""
    from triton.testing import do_bench

    first = timed_calls_ms(fn, grad_to_none, 2)[1]
    if first > SLOW_CALL_MS:
        times = sorted([first, *timed_calls_ms(fn, grad_to_none, 2 if first < 10 * SLOW_CALL_MS else 0)])
        return times[len(times) // 2], times[0], times[-1]
    median, p20, p80 = do_bench(fn, warmup=warmup, rep=rep, grad_to_none=grad_to_none, quantiles=[0.5, 0.2, 0.8])
    return median, p20, p80


def host_ms(fn: Callable[[], Any], grad_to_none=None, calls: int = 3) -> float:
    """Milliseconds of host time per call: ``calls`` calls issued back to back without waiting for
    the GPU, which runs behind (a call that synchronizes inside counts its wait too). A case whose
    host time is above its GPU time (the median) is host-bound: launch overhead, not kernels."""
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        _reset_grads(grad_to_none)
        fn()
    elapsed = time.perf_counter() - start
    torch.cuda.synchronize()
    return elapsed / calls * 1e3


# queued_ms holds the GPU in a sleep kernel of about this many cycles per host millisecond (2.5 GHz:
# above the H100 / H200 boost clock, so the sleep lasts at least as long as asked).
SLEEP_CYCLES_PER_MS = 2.5e6
FLUSH_BYTES = 256 * 2**20  # zeroed before each timed call, as do_bench does: L2 starts cold


def queued_ms(fn: Callable[[], Any], host: float, grad_to_none=None, reps: int = 30) -> float:
    """Median milliseconds of ``fn``'s GPU work with no launch gaps: before each timed call the GPU
    sleeps ~1.5x ``host`` (the call's host time), so the whole call is queued before the GPU
    reaches it. do_bench's median (the published figure) counts the gaps where the host is slower
    than the kernels; this is the kernels alone, for telling kernel speed from launch overhead.
    A call that waits for the GPU inside (a .item()), or that launches more kernels than CUDA
    queues (~1000: a whole training step), still counts its gaps."""
    flush = torch.empty(FLUSH_BYTES, dtype=torch.int8, device="cuda")
    sleep_cycles = int(SLEEP_CYCLES_PER_MS * (1.5 * host + 0.05))
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
    for start, end in events:
        _reset_grads(grad_to_none)
        flush.zero_()
        torch.cuda._sleep(sleep_cycles)
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    times = sorted(start.elapsed_time(end) for start, end in events)
    return times[len(times) // 2]


def measure_copy_bandwidth() -> float:
    """Device-to-device copy, bytes read + written per second (the memory-bound ceiling)."""
    n = 1 << 28  # 512 MiB of bf16 each way: far past L2
    src = torch.randn(n, device="cuda", dtype=torch.bfloat16)
    dst = torch.empty_like(src)
    median, _, _ = time_ms(lambda: dst.copy_(src))
    return 2 * src.numel() * src.element_size() / (median * 1e-3)


def measure_matmul_flops() -> float:
    """bf16 matmul rate at 8192^3 through torch (cuBLAS), FLOP/s."""
    n = 8192
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    median, _, _ = time_ms(lambda: a @ b)
    return 2 * n**3 / (median * 1e-3)


def progress(i: int, total: int, label: str) -> None:
    width = 30
    done = int(width * i / max(total, 1))
    sys.stderr.write(f"\r[{'#' * done}{'.' * (width - done)}] {i}/{total} {label[:70]:70}")
    if i == total:
        sys.stderr.write("\n")
    sys.stderr.flush()


def gpu_usable() -> bool:
    """False after a sticky CUDA error (an illegal address, a device assert): every later call
    fails, so the run must stop. True without a GPU (the harness's CPU tests)."""
    if not torch.cuda.is_available():
        return True
    try:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        return True
    except Exception:  # noqa: BLE001 - any failure here means the context is gone
        return False


def release_case(grads, reset_dynamo: bool = True) -> bool:
    """Frees what a finished case holds; returns :func:`gpu_usable`. Dynamo's recompile limit (8
    per function) is shared by every torch.compile wrapper of one function: past it, calls
    silently run eager. Resetting Dynamo between shapes keeps each shape's compiles within it; the
    cases of one shape (forward, then forward + backward) share theirs."""
    if isinstance(grads, list):
        grads.clear()  # the case's input holder: its tensors and gradients go now, not at the end of the run
    if reset_dynamo:
        torch._dynamo.reset()
    return gpu_usable()


def run_cases(cases: list[BenchCase], ceilings: dict, env: dict, budget_s: Optional[float] = None,
              log_path: Optional[str] = None) -> list[Record]:
    """Times every case. With ``budget_s``, stops starting cases once that many seconds have
    passed (the rest are reported as not run); with ``log_path``, appends each record as one JSON
    line the moment it is measured, so a run killed at a time limit still leaves its numbers
    (:func:`read_records`). Stops at a sticky CUDA error."""
    stamp = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    started = time.monotonic()
    records = []
    for i, case in enumerate(cases):
        if budget_s is not None and time.monotonic() - started > budget_s:
            sys.stderr.write(f"\ntime budget of {budget_s:.0f} s spent: {len(cases) - i} cases not run, "
                             f"from {case.op} {case.shape} {case.mode} {case.provider}\n")
            break
        progress(i, len(cases), f"{case.op} {case.shape} {case.mode} {case.provider}")
        rec = Record(case.op, case.provider, case.mode, case.shape, case.dtype, "ms", None, None, None,
                     baseline=case.baseline, extra=dict(case.extra), gpu=env["gpu"],
                     versions={k: v for k, v in env.items() if k != "gpu"}, timestamp=stamp)
        fn = grads = None
        try:
            fn = case.make()
            grads = case.grad_to_none() if case.grad_to_none else None
            rec.median, rec.p20, rec.p80 = time_ms(fn, grad_to_none=grads)
            if rec.median < SLOW_CALL_MS:
                try:
                    rec.extra["host_ms"] = host_ms(fn, grads)
                    rec.extra["queued_ms"] = queued_ms(fn, rec.extra["host_ms"], grads)
                except Exception as exc:  # noqa: BLE001 - the median stands; say what is missing
                    rec.extra["timing_note"] = f"host / queued time not measured: {type(exc).__name__}"
        except Exception as exc:  # noqa: BLE001 - a failing provider is a record, not a crash
            rec.error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
        finally:
            fn = None
            next_shape = (cases[i + 1].op, cases[i + 1].shape) if i + 1 < len(cases) else None
            usable = release_case(grads, reset_dynamo=next_shape != (case.op, case.shape))
        if rec.median:
            seconds = rec.median * 1e-3
            floors = []
            if case.bytes:
                rec.tbps = case.bytes / seconds / 1e12
                floors.append(case.bytes / ceilings["copy_bytes_per_s"])
            if case.flops:
                rec.tflops = case.flops / seconds / 1e12
                floors.append(case.flops / ceilings["matmul_flops_per_s"])
            if floors:
                rec.pct_of_floor = 100 * max(floors) / seconds
        records.append(rec)
        if log_path:
            with open(log_path, "a") as f:
                f.write(json.dumps(dataclasses.asdict(rec)) + "\n")
        if not usable:
            sys.stderr.write(f"\nthe GPU is unusable after {case.op} {case.shape} {case.mode} {case.provider} "
                             f"({rec.error or 'a sticky CUDA error'}): {len(cases) - i - 1} cases not run\n")
            break
    progress(len(records), len(cases), "done")
    _fill_ratios(records)
    return records


def read_records(log_path: str) -> list[Record]:
    """The records a run appended to ``log_path`` (one JSON line each), ratios filled in: what an
    interrupted run measured."""
    records = []
    if os.path.exists(log_path):
        with open(log_path) as f:
            records = [Record(**json.loads(line)) for line in f if line.strip()]
    _fill_ratios(records)
    return records


# A baseline named BEST + prefix is the fastest provider whose name starts with the prefix, per
# (op, shape, mode): "best:sdpa-" is the best SDPA backend of each attention case.
BEST = "best:"


def _fill_ratios(records: list[Record]) -> None:
    """ratio_vs_baseline = baseline time / this time (> 1: faster than the baseline)."""
    times: dict[tuple, dict[str, float]] = {}
    for r in records:
        if r.median:
            times.setdefault((r.op, r.shape, r.mode), {})[r.provider] = r.median
    for r in records:
        by_provider = times.get((r.op, r.shape, r.mode), {})
        if r.baseline.startswith(BEST):
            base = min((t for p, t in by_provider.items() if p.startswith(r.baseline[len(BEST):])), default=None)
        else:
            base = by_provider.get(r.baseline)
        if r.median and base:
            r.ratio_vs_baseline = base / r.median


def write_results(records: list[Record], ceilings: dict, env: dict, out_dir: str) -> None:
    os.makedirs(out_dir, exist_ok=True)
    payload = {"environment": env, "ceilings": ceilings, "records": [dataclasses.asdict(r) for r in records]}
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(payload, f, indent=1)
    with open(os.path.join(out_dir, "results.md"), "w") as f:
        f.write(markdown_table(records, ceilings, env) + "\n" + targets.markdown(payload["records"], env["gpu"]))
    plot(records, out_dir)


def _fmt(value: Optional[float], digits: int = 3) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def markdown_table(records: list[Record], ceilings: dict, env: dict) -> str:
    lines = [f"# Benchmark results: {env['gpu']}, {env.get('date', '')}", "",
             f"torch {env['torch']}, triton {env['triton']}, CUDA {env['cuda']}, cuDNN {env.get('cudnn', '')}, "
             f"timm {env.get('timm', '')}, transformers {env.get('transformers', '')}, "
             f"measured copy bandwidth {ceilings['copy_bytes_per_s'] / 1e12:.2f} TB/s, "
             f"bf16 matmul {ceilings['matmul_flops_per_s'] / 1e12:.0f} TFLOP/s", "",
             "| op | shape | mode | provider | median ms | p20 | p80 | host ms | queued ms | TB/s | TFLOP/s | "
             "% of floor | x vs baseline | note |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        ratio = f"{r.ratio_vs_baseline:.2f} ({r.baseline})" if r.ratio_vs_baseline else ""
        lines.append(f"| {r.op} | {r.shape} | {r.mode} | {r.provider} | {_fmt(r.median, 4)} | {_fmt(r.p20, 4)} | "
                     f"{_fmt(r.p80, 4)} | {_fmt(r.extra.get('host_ms'), 4)} | {_fmt(r.extra.get('queued_ms'), 4)} | "
                     f"{_fmt(r.tbps, 2)} | "
                     f"{_fmt(r.tflops, 1)} | {_fmt(r.pct_of_floor, 0)} | {ratio} | {r.error[:80]} |")
    return "\n".join(lines) + "\n"


def plot(records: list[Record], out_dir: str) -> None:
    """One PNG per (op, mode): bars of x-vs-baseline per shape and provider."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not importable: no plots")
        return
    groups: dict[tuple[str, str], list[Record]] = {}
    for r in records:
        if r.ratio_vs_baseline:
            groups.setdefault((r.op, r.mode), []).append(r)
    for (op, mode), rows in groups.items():
        shapes = list(dict.fromkeys(r.shape for r in rows))
        providers = list(dict.fromkeys(r.provider for r in rows))
        fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(shapes)), 4))
        width = 0.8 / len(providers)
        for j, provider in enumerate(providers):
            values = [next((r.ratio_vs_baseline for r in rows if r.shape == s and r.provider == provider), 0)
                      for s in shapes]
            ax.bar([i + j * width for i in range(len(shapes))], values, width, label=provider)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(shapes))], shapes, rotation=20, ha="right", fontsize=8)
        ax.set_ylabel(f"speed-up vs {rows[0].baseline}")
        ax.set_title(f"{op} {mode}")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(os.path.join(out_dir, f"{op}_{mode.replace('+', '_')}.png"), dpi=110)
        plt.close(fig)


def default_out_dir(env: dict) -> str:
    gpu = env["gpu"].replace(" ", "_").replace("/", "_")
    return os.path.join(os.path.dirname(__file__), "results", f"{time.strftime('%Y-%m-%d')}_{gpu}")
