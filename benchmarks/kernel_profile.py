"""Where the time goes: the CUDA kernels of benchmark cases, by device time (torch.profiler).

    python benchmarks/kernel_profile.py [--ops vit_clip,swin_igpt_detr] [--match RE] [--quick] [--top 15] [--out DIR]

Runs each selected case's function (the same cases benchmarks/run.py times) a few times under
torch.profiler and writes profile.md (per case: the top kernels by device time per call, their
launches per call, their share, and who wrote them: vtkernels' Triton or CUDA kernels, cuBLAS /
cuDNN / CUTLASS, PyTorch's own, or other) and profile.json. It answers what a timing alone
cannot: which kernel a slow model spends its time in. A CUDA-graph replay shows up as one graph
launch (the kernels inside it are not listed): profile iGPT sampling through its eager provider.

``--plain`` runs the same calls without torch.profiler and writes nothing, for a profiler from
outside that cannot share the GPU's counters with it, Nsight Compute (tools/gpu_check.sh's ncu step):

    ncu --clock-control none --kernel-name regex:attention_bwd --launch-count 4 --section SpeedOfLight \
        python benchmarks/kernel_profile.py --plain --ops attention --match 'ViT-B.*fwd\+bwd vtkernels-triton'
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import os
import pkgutil
import sys
from typing import Callable, Iterable, Optional

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import harness  # noqa: E402
from benchmarks.run import collect_cases  # noqa: E402

LIBRARY_MARKERS = ("gemm", "xmma", "cutlass", "cublas", "cudnn", "sm90_", "sm80_", "flash", "fmha")


@functools.lru_cache(maxsize=1)
def triton_kernel_names() -> frozenset:
    """The names of every @triton.jit function in vtkernels.triton (a Triton kernel launches under
    its function's name)."""
    from triton.runtime.jit import KernelInterface  # (JITFunction, or the interpreter's stand-in)

    import vtkernels.triton

    names = set()
    for info in pkgutil.iter_modules(vtkernels.triton.__path__):
        module = importlib.import_module(f"vtkernels.triton.{info.name}")
        names.update(name for name, value in vars(module).items() if isinstance(value, KernelInterface))
    return frozenset(names)


def kernel_kind(name: str) -> str:
    """Who wrote a kernel, from its name: "vtkernels-triton", "vtkernels-cuda" (namespace vtk::),
    "library" (cuBLAS, cuDNN, CUTLASS, flash), "pytorch" (at::native) or "other"."""
    if name in triton_kernel_names():
        return "vtkernels-triton"
    if "vtk::" in name:
        return "vtkernels-cuda"
    lowered = name.lower()
    if any(marker in lowered for marker in LIBRARY_MARKERS):
        return "library"
    if "at::native" in name or "at::" in name:
        return "pytorch"
    return "other"


def kernel_table(events: Iterable, calls: int, device_type) -> list[dict]:
    """Per kernel (profiler key), device microseconds and launches per call of the profiled
    function, largest first, with its share of the total; ``events`` is ``prof.key_averages()``."""
    rows = []
    for event in events:
        if event.device_type != device_type:
            continue
        if device_type == torch.autograd.DeviceType.CPU:
            self_us = event.self_cpu_time_total
        else:
            self_us = getattr(event, "self_device_time_total", None)
            self_us = self_us if self_us is not None else event.self_cuda_time_total
        if self_us <= 0:
            continue
        rows.append({"kernel": event.key, "us_per_call": self_us / calls, "launches_per_call": event.count / calls,
                     "kind": kernel_kind(event.key)})
    total = sum(row["us_per_call"] for row in rows) or 1.0
    for row in rows:
        row["share"] = row["us_per_call"] / total
    return sorted(rows, key=lambda row: row["us_per_call"], reverse=True)


def profile(fn: Callable[[], object], calls: int = 5, device: str = "cuda") -> list[dict]:
    """kernel_table of ``calls`` runs of ``fn`` (after two warm-up runs)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    cuda = device == "cuda"
    for _ in range(2):
        fn()
    if cuda:
        torch.cuda.synchronize()
    with torch_profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as prof:
        for _ in range(calls):
            fn()
        if cuda:
            torch.cuda.synchronize()
    device_type = torch.autograd.DeviceType.CUDA if cuda else torch.autograd.DeviceType.CPU
    return kernel_table(prof.key_averages(), calls, device_type)


def run_plain(fn: Callable[[], object], calls: int) -> None:
    """``calls`` runs of ``fn`` and no warm-up: an outside profiler picks launches by their count,
    and a first call's compiling launches nothing of its own."""
    for _ in range(calls):
        fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def by_kind(rows: list[dict]) -> dict[str, float]:
    """Share of the device time per kernel kind."""
    shares: dict[str, float] = {}
    for row in rows:
        shares[row["kind"]] = shares.get(row["kind"], 0.0) + row["share"]
    return dict(sorted(shares.items(), key=lambda item: item[1], reverse=True))


def markdown(results: list[dict], top: int) -> str:
    lines = []
    for result in results:
        lines.append(f"## {result['case']}\n")
        if result.get("error"):
            lines.append(f"failed: {result['error']}\n")
            continue
        rows = result["kernels"]
        total = sum(row["us_per_call"] for row in rows)
        kinds = ", ".join(f"{kind} {share:.0%}" for kind, share in by_kind(rows).items())
        lines.append(f"{total / 1000:.3f} ms of kernels per call, {len(rows)} distinct kernels: {kinds}\n")
        lines.append("| kernel | kind | us / call | launches / call | share |")
        lines.append("|---|---|---:|---:|---:|")
        for row in rows[:top]:
            name = row["kernel"] if len(row["kernel"]) <= 90 else row["kernel"][:87] + "..."
            lines.append(f"| `{name}` | {row['kind']} | {row['us_per_call']:.1f} | {row['launches_per_call']:.1f} "
                         f"| {row['share']:.1%} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", help="comma-separated benchmark module names (default: all)")
    parser.add_argument("--match", help="regular expression on 'op shape mode provider'")
    parser.add_argument("--quick", action="store_true", help="one shape per op")
    parser.add_argument("--top", type=int, default=15, help="kernels listed per case")
    parser.add_argument("--calls", type=int, default=5, help="profiled calls per case")
    parser.add_argument("--out", help="output folder (default benchmarks/results/<date>_<gpu>)")
    parser.add_argument("--plain", action="store_true",
                        help="run the calls without torch.profiler, write nothing (for ncu from outside)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("profiling needs a CUDA GPU; none found")
        return 2
    env = harness.environment()
    cases = collect_cases(args.ops, args.quick, args.match)
    results = []
    for i, case in enumerate(cases):
        label = f"{case.op} {case.shape} {case.mode} {case.provider}"
        harness.progress(i, len(cases), label)
        result = {"case": label}
        try:
            if args.plain:
                run_plain(case.make(), args.calls)
            else:
                result["kernels"] = profile(case.make(), args.calls)
        except Exception as exc:  # noqa: BLE001 - a failing case is a line in the report, not a crash
            result["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
        results.append(result)
        if not harness.release_case(None):
            print(f"\nthe GPU is unusable after {label}: the remaining cases are not profiled")
            break
    harness.progress(len(cases), len(cases), "done")
    if args.plain:
        failed = [f"{result['case']}: {result['error']}" for result in results if result.get("error")]
        print("\n".join(failed))
        return 1 if failed else 0
    out = args.out or harness.default_out_dir(env)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "profile.json"), "w") as f:
        json.dump({"env": env, "results": results}, f, indent=1)
    text = f"# Kernel profile: {env['gpu']}, torch {env['torch']}, triton {env['triton']}\n\n" + markdown(results,
                                                                                                       args.top)
    with open(os.path.join(out, "profile.md"), "w") as f:
        f.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
