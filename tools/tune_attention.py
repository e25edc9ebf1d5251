"""Sweep the Triton attention tile configurations on a GPU, per benchmark shape and kernel.

    python tools/tune_attention.py [--shapes ViT-B,iGPT-S] [--kernels fwd,dkdv,dq] [--out tune.json]

For each shape of benchmarks/ops/attention.py (bf16) and each kernel, times every candidate
(BLOCK_M, BLOCK_N, num_warps, num_stages) with ``triton.testing.do_bench`` while the other
kernels keep vtkernels.triton.attention.launch_config's choice, rejects candidates that fail to
compile or change the result, and prints the fastest next to the current default. Copy the
winners into ``launch_config`` (and rerun tools/triton_aot_check.py and the tests).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.ops.attention import SHAPES, _padding  # noqa: E402
from vtkernels.triton import attention as triton_attention  # noqa: E402

CANDIDATES = {
    "fwd": {"BLOCK_M": (64, 128), "BLOCK_N": (32, 64, 128), "num_warps": (4, 8), "num_stages": (2, 3, 4)},
    "dkdv": {"BLOCK_M": (16, 32, 64), "BLOCK_N": (64, 128), "num_warps": (4, 8), "num_stages": (2, 3)},
    "dq": {"BLOCK_M": (64, 128), "BLOCK_N": (16, 32, 64), "num_warps": (4, 8), "num_stages": (2, 3)},
}
DEFAULT_CONFIG = triton_attention.launch_config


def _inputs(spec):
    batch, heads, n_q, n_kv, head_dim, causal, padded = spec
    q, k, v = (torch.randn(batch, heads, n, head_dim, device="cuda", dtype=torch.bfloat16) for n in (n_q, n_kv, n_kv))
    mask = _padding(batch, n_kv)[0] if padded else None
    return q, k, v, mask, causal, head_dim ** -0.5


def _run(kernel, q, k, v, mask, causal, scale):
    """Closure running the forward (kernel "fwd") or the backward, and its outputs."""
    out = torch.empty_like(q)
    lse = q.new_empty(q.shape[:3], dtype=torch.float32)
    triton_attention.forward(q, k, v, mask, out, lse, causal, scale)
    if kernel == "fwd":
        return lambda: triton_attention.forward(q, k, v, mask, out, lse, causal, scale), [out]
    dout = torch.randn_like(out)
    grads = [torch.empty_like(t) for t in (q, k, v)]
    return lambda: triton_attention.backward(dout, q, k, v, mask, out, lse, *grads, causal, scale), grads


def tune(label, spec, kernel):
    from triton.testing import do_bench

    tensors = _inputs(spec)
    fn, outputs = _run(kernel, *tensors)
    fn()
    expected = [o.float().clone() for o in outputs]
    default = {key: val for key, val in DEFAULT_CONFIG(spec[4], torch.bfloat16, kernel, spec[2]).items()}
    results = []
    names = list(CANDIDATES[kernel])
    candidates = [dict(zip(names, values)) for values in itertools.product(*CANDIDATES[kernel].values())]
    if not any(all(c[n] == default[n] for n in names) for c in candidates):
        candidates.append({n: default[n] for n in names})  # always time the current choice
    for candidate in candidates:

        def patched(head_dim, dtype, which, n=None, candidate=candidate):
            return dict(candidate) if which == kernel else DEFAULT_CONFIG(head_dim, dtype, which, n)

        triton_attention.launch_config = patched
        try:
            fn()
            ok = all(torch.allclose(o.float(), e, atol=2e-2, rtol=2e-2) for o, e in zip(outputs, expected))
            ms = do_bench(fn, warmup=10, rep=50) if ok else float("nan")
        except Exception as exc:  # noqa: BLE001 - a config that does not compile or fit is skipped
            ok, ms = False, float("nan")
            candidate["error"] = f"{type(exc).__name__}"
        finally:
            triton_attention.launch_config = DEFAULT_CONFIG
        results.append({**candidate, "ms": ms, "ok": ok, "default": all(default.get(n) == candidate[n] for n in names)})
    valid = [r for r in results if r["ok"]]
    best = min(valid, key=lambda r: r["ms"]) if valid else None
    base = next((r for r in results if r["default"]), None)
    speedup = base["ms"] / best["ms"] if best and base and base["ok"] else float("nan")
    print(f"{label:32} {kernel:5} default {base['ms'] if base else float('nan'):8.4f} ms  "
          f"best {best['ms'] if best else float('nan'):8.4f} ms ({speedup:.2f}x) {best}")
    return {"shape": label, "kernel": kernel, "default": default, "best": best, "all": results}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", help="comma-separated substrings of the benchmark shape labels")
    parser.add_argument("--kernels", default="fwd,dkdv,dq")
    parser.add_argument("--out", default="attention_tuning.json")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("tune_attention needs a CUDA GPU")
        return 2
    wanted = args.shapes.split(",") if args.shapes else None
    report = []
    for label, spec in SHAPES.items():
        if wanted and not any(w in label for w in wanted):
            continue
        for kernel in args.kernels.split(","):
            report.append(tune(label, spec, kernel))
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1, default=str)
    print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
