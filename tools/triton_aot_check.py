"""Ahead-of-time compile of every Triton kernel for Hopper (sm_90), on a machine without a GPU.

Each module in vtkernels/triton/ that defines ``aot_configs()`` yields
``(kernel, signature, constexprs, options)`` for the configurations the library launches, and
optionally a fifth item: representative launch values of integer arguments. The compile gets the
specializations a real launch gets: pointers 16-byte aligned (torch allocations are), integers
divisible by 16 marked so, integers equal to 1 folded to constants. Without them the report
shows spills and missing cp.async pipelining that real launches do not have.
Compiles each with ``triton.compile(ASTSource(...), target=GPUTarget("cuda", 90, 32))``, then
reports registers, spills and shared memory (from the cubin, via the cuobjdump shipped with
Triton) and whether the PTX uses wgmma. Exits non-zero on any compile error.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import re
import subprocess
import sys
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

import vtkernels.triton

TARGET = GPUTarget("cuda", 90, 32)
CUOBJDUMP = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")


def resource_usage(cubin: bytes) -> tuple[int, int]:
    """(registers, spill bytes) read from the cubin's resource usage table."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([CUOBJDUMP, "-res-usage", f.name], capture_output=True, text=True).stdout
    regs = re.search(r"REG:(\d+)", text)
    stack = re.search(r"STACK:(\d+)", text)
    return int(regs.group(1)) if regs else -1, int(stack.group(1)) if stack else -1


def specialize(kernel, signature: dict, constexprs: dict, values: dict):
    """The JIT's launch-time specializations (see the module docstring)."""
    signature, constexprs = dict(signature), dict(constexprs)
    for name, value in values.items():
        if value == 1 and name in signature and not signature[name].startswith("*"):
            signature.pop(name)
            constexprs[name] = 1
    attrs = {}
    for name, kind in signature.items():
        if kind.startswith("*") or (name in values and values[name] % 16 == 0):
            attrs[(kernel.arg_names.index(name),)] = [["tt.divisibility", 16]]
    return signature, constexprs, attrs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="compile only modules whose name contains this")
    args = parser.parse_args()
    failures, count = 0, 0
    print(f"{'kernel':34} {'constexprs':60} {'warps':>5} {'regs':>5} {'stack':>5} {'smem':>7} wgmma")
    for info in pkgutil.iter_modules(vtkernels.triton.__path__):
        if args.only and args.only not in info.name:
            continue
        module = importlib.import_module(f"vtkernels.triton.{info.name}")
        if not hasattr(module, "aot_configs"):
            continue
        try:
            configs = list(module.aot_configs())
        except Exception as exc:  # noqa: BLE001 - a broken module is a failure, not a crash
            failures += 1
            print(f"{info.name}.aot_configs() FAILED: {type(exc).__name__}: {exc}")
            continue
        for kernel, signature, constexprs, options, *values in configs:
            signature, constexprs, attrs = specialize(kernel, signature, constexprs, values[0] if values else {})
            count += 1
            name = f"{info.name}.{kernel.fn.__name__}"
            # The operand dtype: the first tensor descriptor's (then the kernel loads by TMA), else
            # the first pointer's.
            tma = next((t[len("tensordesc<"):].split("[")[0] for t in signature.values()
                        if t.startswith("tensordesc<")), None)
            dtype = f"{tma} tma" if tma else next((t[1:] for t in signature.values() if t.startswith("*")), "")
            sizes = ",".join(f"{k}={v}" for k, v in constexprs.items() if type(v) is int)
            shown = f"{dtype} {sizes}"[:60]
            sig = {**signature, **{k: "constexpr" for k in constexprs}}
            try:
                compiled = triton.compile(ASTSource(kernel, sig, constexprs, attrs), target=TARGET, options=options)
            except Exception as exc:  # noqa: BLE001 - report every failure, then fail
                failures += 1
                print(f"{name:34} {shown:60} FAILED: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
                continue
            regs, stack = resource_usage(compiled.asm["cubin"])
            wgmma = "yes" if "wgmma" in compiled.asm["ptx"] else "-"
            print(f"{name:34} {shown:60} {options.get('num_warps', 4):>5} {regs:>5} {stack:>5} "
                  f"{compiled.metadata.shared:>7} {wgmma}")
    print(f"triton AOT sm_90: {count - failures} compiled, {failures} failed")
    return 1 if failures or count == 0 else 0


if __name__ == "__main__":
    sys.exit(main())
