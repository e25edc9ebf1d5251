"""Sweep Triton launch configurations on a GPU, per benchmark shape and kernel.

    python tools/tune.py [--ops norm,attention,window_attention,clip_loss,patch_embed,mlp] [--shapes ViT-B,Swin-T]
                         [--kernels fwd,bwd] [--out tuning.json]

For each op's shapes (bf16) and each of its kernels, times every candidate configuration (grids of
6 to 32 around the current choice: most of a sweep's time is Triton compiling, a few seconds per
candidate, so a whole run takes longer than one 10-minute device call; split it with --ops /
--shapes / --kernels) with
:func:`time_ms` (the GPU time alone, no launch gaps) while the op's other kernels keep their ``launch_config`` choice,
rejects candidates that fail to compile or change the result, and prints the fastest next to the
time of what ships (the code unchanged). Copy the winners into the op's ``launch_config`` (then rerun
tools/triton_aot_check.py and the tests). A candidate replaces the program tile of every launch,
so attention's short-sequence tail launches (``program_launches``) are not tuned here.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import itertools
import json
import os
import sys
from typing import Callable

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vtkernels.triton import attention as triton_attention  # noqa: E402
from vtkernels.triton import clip_loss as triton_clip  # noqa: E402
from vtkernels.triton import mlp as triton_mlp  # noqa: E402
from vtkernels.triton import norm as triton_norm  # noqa: E402
from vtkernels.triton import patch_embed as triton_patch_embed  # noqa: E402
from vtkernels.triton import strip_matmul as triton_strip  # noqa: E402
from vtkernels.triton import window_attention as triton_window  # noqa: E402
from vtkernels.triton import window_attention_bwd as triton_window_bwd  # noqa: E402

DTYPE = torch.bfloat16
DEVICE = "cuda"  # (tests/test_tune.py runs the sweep's mechanics on the CPU, under the interpreter)


def _override(default, args, kwargs, candidate) -> dict:
    """The call's default configuration with the candidate's values on top."""
    return {**default(*args, **kwargs), **candidate}


@dataclasses.dataclass
class Target:
    """What tuning one op needs."""

    modules: tuple                     # the modules whose ``launch_config`` global is patched
    shapes: dict                       # label -> spec
    candidates: dict                   # kernel -> {config key: values}
    kernel_of: Callable                # (launch_config's args, kwargs) -> the kernel the call configures
    run: Callable                      # (spec, kernel) -> (closure, its outputs)
    default: Callable                  # (spec, kernel) -> the current config
    configure: Callable = _override    # (default launch_config, args, kwargs, candidate) -> config


# --- attention -------------------------------------------------------------------------------

def _attention_run(spec, kernel):
    batch, heads, n_q, n_kv, head_dim, causal, padded = spec
    q, k, v = (torch.randn(batch, heads, n, head_dim, device=DEVICE, dtype=DTYPE) for n in (n_q, n_kv, n_kv))
    mask = torch.arange(n_kv, device=DEVICE)[None, :] >= torch.randint(n_kv // 2, n_kv + 1, (batch, 1), device=DEVICE) \
        if padded else None
    scale = head_dim ** -0.5
    out = torch.empty_like(q)
    lse = q.new_empty(q.shape[:3], dtype=torch.float32)

    def forward():
        triton_attention.forward(q, k, v, mask, out, lse, causal, scale)

    forward()
    if kernel == "fwd":
        return forward, [out]
    dout = torch.randn_like(out)
    grads = [torch.empty_like(t) for t in (q, k, v)]
    return lambda: triton_attention.backward(dout, q, k, v, mask, out, lse, *grads, causal, scale), grads


def _attention_target() -> Target:
    from benchmarks.ops.attention import SHAPES

    return Target(
        modules=(triton_attention,),
        shapes=SHAPES,
        candidates={
            "fwd": {"BLOCK_M": (64, 128), "BLOCK_N": (64, 128), "num_warps": (4, 8), "num_stages": (3,),
                    "TMA": (True, False)},
            "dkdv": {"BLOCK_M": (32, 64), "BLOCK_N": (64, 128), "num_warps": (4, 8), "num_stages": (3,),
                     "TMA": (True, False)},
            "dq": {"BLOCK_M": (64, 128), "BLOCK_N": (32, 64), "num_warps": (4, 8), "num_stages": (3,),
                   "TMA": (True, False)},
        },
        kernel_of=lambda args, kwargs: args[2],
        run=_attention_run,
        # (the program axis holds the queries of fwd / dq and the keys of dkdv)
        default=lambda spec, kernel: triton_attention.launch_config(spec[4], DTYPE, kernel,
                                                                    spec[3] if kernel == "dkdv" else spec[2]),
    )


# --- Swin window attention -------------------------------------------------------------------

# label: (batch, map side, channels, heads, window); shifted (window // 2), head_dim 32
WINDOW_SHAPES = {
    "Swin-T s1 B=64 56x56x96 w7": (64, 56, 96, 3, 7),
    "Swin-T s2 B=64 28x28x192 w7": (64, 28, 192, 6, 7),
    "Swin-T s3 B=64 14x14x384 w7": (64, 14, 384, 12, 7),
    "Swin-B@384 s1 B=32 96x96x128 w12": (32, 96, 128, 4, 12),
}


def _window_run(spec, kernel):
    batch, side, channels, heads, window = spec
    qkv = torch.randn(batch, side, side, 3 * channels, device=DEVICE, dtype=DTYPE)
    table = torch.randn((2 * window - 1) ** 2, heads, device=DEVICE)
    geo = triton_window.Geometry(side, side, window, window, window // 2, heads, channels // heads)
    scale = (channels // heads) ** -0.5
    if kernel == "fwd":
        holder = [triton_window.forward(qkv, table, None, geo, scale, -100.0, False)]

        def forward():
            holder[0] = triton_window.forward(qkv, table, None, geo, scale, -100.0, False)
        return forward, holder
    dout = torch.randn(batch, side, side, channels, device=DEVICE, dtype=DTYPE)
    holder = list(triton_window_bwd.backward(dout, qkv, table, None, geo, scale, -100.0, False))[:2]

    def backward():
        holder[:] = triton_window_bwd.backward(dout, qkv, table, None, geo, scale, -100.0, False)[:2]
    return backward, holder


def _window_configure(default, args, kwargs, candidate):
    """BLOCK_M and BLOCK_N go through launch_config, which derives ROWS_REST and the windows per
    tile (G) from them; BLOCK_N only packs windows of up to 64 tokens (larger ones keep theirs)."""
    rest = {key: value for key, value in candidate.items() if key not in ("BLOCK_M", "BLOCK_N")}
    return {**default(*args, **kwargs, block_m=candidate.get("BLOCK_M"), block_n=candidate.get("BLOCK_N")), **rest}


def _window_target() -> Target:
    def kernel_of(args, kwargs):
        backward = kwargs.get("backward", args[2] if len(args) > 2 else False)
        return "bwd" if backward else "fwd"

    return Target(
        modules=(triton_window, triton_window_bwd),  # the backward imported launch_config by name
        shapes=WINDOW_SHAPES,
        candidates={
            # (4 warps won every forward candidate of 2026-12-04's sweep; the GROUPS loop is new since)
            "fwd": {"BLOCK_M": (64, 128), "BLOCK_N": (64,), "num_warps": (4,), "num_stages": (1, 2, 3),
                    "GROUPS": (1, 2, 4, 8)},
            "bwd": {"BLOCK_M": (16, 32, 64), "BLOCK_N": (64, 128), "num_warps": (4, 8), "num_stages": (1,)},
        },
        kernel_of=kernel_of,
        configure=_window_configure,
        run=_window_run,
        default=lambda spec, kernel: triton_window.launch_config(spec[4] ** 2, spec[2] // spec[3], kernel == "bwd"),
    )


# --- CLIP loss -------------------------------------------------------------------------------

CLIP_SHAPES = {"n=16384 d=768": (16384, 768), "n=65536 d=768": (65536, 768)}


def _clip_run(spec, kernel):
    """Forward + backward through the op (the 'tile' config serves both; the strip matmuls only the backward)."""
    import vtkernels

    n, d = spec
    image, text = (torch.randn(n, d, device=DEVICE, dtype=DTYPE, requires_grad=True) for _ in range(2))
    scale = torch.tensor(2.659, device=DEVICE, requires_grad=True)

    grads = []

    def step():  # (the gradients are new tensors each time: the list is what tune() compares)
        image.grad = text.grad = scale.grad = None
        vtkernels.clip_loss(image, text, scale, backend="triton").backward()
        grads[:] = [image.grad, text.grad]
    step()
    return step, grads


def _clip_target() -> Target:
    def kernel_of(args, kwargs):
        first = args[0] if args else kwargs.get("kind", kwargs.get("dtype"))
        return "strip" if isinstance(first, torch.dtype) else first  # strip_matmul's takes (dtype, interpret)

    def default(spec, kernel):
        return triton_strip.launch_config(DTYPE) if kernel == "strip" else triton_clip.launch_config(kernel, DTYPE)

    return Target(
        modules=(triton_clip, triton_strip),
        shapes=CLIP_SHAPES,
        candidates={
            # (maxnreg 128: two 8-warp programs per SM; None: the compiler's choice, 140+ registers)
            "tile": {"BLOCK_M": (128,), "BLOCK_N": (64, 128), "BLOCK_K": (64,), "num_warps": (4, 8),
                     "num_stages": (3, 4), "TMA": (True, False), "maxnreg": (128, None)},
            # (the dI product's 128 x 128 tiles take 130 registers: one program per SM; capped at 128,
            # 8 bytes of spill, two)
            "strip": {"BLOCK_M": (128,), "BLOCK_N": (128, 256), "BLOCK_K": (64,), "num_warps": (8,),
                      "num_stages": (3, 4), "TMA": (True, False), "maxnreg": (None, 128)},
        },
        kernel_of=kernel_of,
        run=_clip_run,
        default=default,
    )


# --- patch embedding -------------------------------------------------------------------------

def _patch_embed_run(spec, kernel):
    """The forward ("fwd"), or forward + backward with the gradient the kernel computes."""
    import vtkernels

    batch, side, patch, dim, cls_pos = spec
    images = torch.randn(batch, 3, side, side, device=DEVICE, dtype=DTYPE, requires_grad=kernel == "bwd_images")
    weight = torch.randn(dim, 3, patch, patch, device=DEVICE, dtype=DTYPE, requires_grad=kernel == "bwd_weight")
    bias = torch.randn(dim, device=DEVICE, dtype=DTYPE)
    tokens = (side // patch) ** 2
    cls = torch.randn(1, 1, dim, device=DEVICE, dtype=DTYPE) if cls_pos else None
    pos = torch.randn(1, tokens + 1, dim, device=DEVICE, dtype=DTYPE) if cls_pos else None
    leaf = images if kernel == "bwd_images" else weight
    holder = []

    def step():
        out = vtkernels.patch_embed(images, weight, bias, patch, cls_token=cls, pos_embed=pos, backend="triton")
        if kernel == "fwd":
            holder[:] = [out]
            return
        leaf.grad = None
        out.backward(torch.ones_like(out))
        holder[:] = [leaf.grad]
    step()
    return step, holder


def _patch_embed_target() -> Target:
    from benchmarks.ops.patch_embed import SHAPES

    backward = {"BLOCK_M": (32, 64, 128), "BLOCK_N": (128,), "BLOCK_K": (64, 128), "num_warps": (8,),
                "num_stages": (3,)}
    return Target(
        modules=(triton_patch_embed,),
        shapes=SHAPES,
        candidates={
            # TMA: the weight tiles by descriptor; IMAGE_TMA: the image too (patch_embed_image_tma.py).
            # maxnreg 128: two 8-warp 128 x 128 programs per SM (98 KB of shared memory each; 146
            # registers uncapped, 16 bytes of spill capped, sm_90).
            "fwd": {"BLOCK_M": (64, 128), "BLOCK_N": (128,), "BLOCK_K": (64,), "num_warps": (4, 8),
                    "num_stages": (3, 4), "TMA": (True,), "IMAGE_TMA": (False, True), "maxnreg": (None, 128)},
            "bwd_weight": backward,
            "bwd_images": backward,
        },
        kernel_of=lambda args, kwargs: args[0],
        run=_patch_embed_run,
        default=lambda spec, kernel: triton_patch_embed.launch_config(kernel, DTYPE, spec[3], 3 * spec[2] ** 2),
    )


# --- MLP ----------------------------------------------------------------------------------------

def _mlp_run(spec, kernel):
    """fc1 + activation as inference runs it ("fwd": no pre-activation stored), or the d pre GEMM ("bwd")."""
    rows, dim, hidden, activation = spec

    def randn(*shape):
        return torch.randn(shape, device=DEVICE, dtype=DTYPE) * shape[-1] ** -0.5

    holder = []
    if kernel == "fwd":
        x, weight, bias = randn(rows, dim), randn(hidden, dim), randn(hidden)

        def step():
            holder[:] = [triton_mlp.linear_act(x, weight, bias, activation, False)[0]]
    else:
        dout, weight, pre = randn(rows, dim), randn(dim, hidden), randn(rows, hidden)

        def step():
            holder[:] = [triton_mlp.matmul_act_grad(dout, weight, pre, activation)]
    step()
    return step, holder


def _mlp_target() -> Target:
    from benchmarks.ops.mlp import SHAPES

    # The persistent tensor-descriptor kernel only (the pointer kernel lost to it at every point in
    # session 23: 0.62-0.75 against 0.54 ms at ViT-B). PROGRAMS_PER_SM 2 overlaps two programs on
    # an SM where their shared memory fits (vtkernels/triton/mlp.py); where it does not, the second
    # program of each SM waits for the first.
    grid = {"BLOCK_M": (64, 128), "BLOCK_N": (128, 256), "BLOCK_K": (64,), "num_warps": (8,),
            "num_stages": (2, 3, 4), "TMA": (True,), "PROGRAMS_PER_SM": (1, 2)}
    return Target(
        modules=(triton_mlp,),
        shapes=SHAPES,
        candidates={"fwd": grid, "bwd": grid},
        kernel_of=lambda args, kwargs: "bwd" if kwargs.get("backward", args[1] if len(args) > 1 else False) else "fwd",
        run=_mlp_run,
        default=lambda spec, kernel: triton_mlp.launch_config(DTYPE, kernel == "bwd"),
    )


# --- LayerNorm -----------------------------------------------------------------------------------

def _norm_run(spec, kernel):
    """LayerNorm with weight and bias, no residual: the forward, or the backward from its statistics."""
    batch, tokens, hidden = spec
    x = torch.randn(batch * tokens, hidden, device=DEVICE, dtype=DTYPE)
    weight, bias = (torch.randn(hidden, device=DEVICE, dtype=DTYPE) for _ in range(2))
    y, _, mean, rstd = triton_norm.forward(x, None, weight, bias, 1e-5, False)
    holder = [y]
    if kernel == "fwd":
        def forward():
            holder[0] = triton_norm.forward(x, None, weight, bias, 1e-5, False)[0]
        return forward, holder
    dy = torch.randn_like(x)

    def backward():
        holder[:] = triton_norm.backward(dy, None, x, weight, mean, rstd, False, True)
    backward()
    return backward, holder


def _norm_target() -> Target:
    from benchmarks.ops.norm import SHAPES

    return Target(
        modules=(triton_norm,),
        shapes=SHAPES,
        candidates={"fwd": {"BLOCK_ROWS": (1, 2, 4, 8), "num_warps": (2, 4, 8)},
                    "bwd": {"BLOCK_ROWS": (1, 2, 4, 8), "num_warps": (4, 8)}},
        kernel_of=lambda args, kwargs: "bwd" if kwargs.get("backward", args[1] if len(args) > 1 else False) else "fwd",
        run=_norm_run,
        default=lambda spec, kernel: triton_norm.launch_config(spec[2], kernel == "bwd"),
    )


# --- the sweep -------------------------------------------------------------------------------

def time_ms(fn) -> float:
    """Median GPU milliseconds of ``fn`` queued behind a sleep kernel (benchmarks/harness.py's
    queued_ms). do_bench's figure also counts the launch gaps where the host is slower than the
    kernel (LayerNorm at ViT-B: 0.053 ms by do_bench, 0.043 ms queued, on an H200), and those
    gaps, the same for every configuration, would flatten the differences the sweep looks for."""
    from benchmarks.harness import host_ms, queued_ms

    return queued_ms(fn, host_ms(fn))  # (tune() has called fn once already: compiled)


def tune(target: Target, label: str, spec, kernel: str) -> dict:
    originals = [module.launch_config for module in target.modules]
    fn, outputs = target.run(spec, kernel)
    fn()
    expected = [o.float().clone() for o in outputs]
    # What ships, timed as it runs: a candidate replaces every launch's configuration, including
    # the smaller tiles of the leftover rows (attention's program_launches), so the candidate equal
    # to the default configuration can be slower than the shipped code.
    shipped_ms = time_ms(fn)
    names = list(target.candidates[kernel])
    default = target.default(spec, kernel)
    candidates = [dict(zip(names, values)) for values in itertools.product(*target.candidates[kernel].values())]
    if not any(all(c[n] == default[n] for n in names) for c in candidates):
        candidates.append({n: default[n] for n in names})  # always time the current choice
    results = []
    for candidate in candidates:

        def patched(*args, original, candidate=candidate, **kwargs):
            if target.kernel_of(args, kwargs) != kernel:
                return original(*args, **kwargs)
            return target.configure(original, args, kwargs, candidate)

        for module, original in zip(target.modules, originals):
            module.launch_config = functools.partial(patched, original=original)
        try:
            fn()
            ok = all(torch.allclose(o.float(), e, atol=2e-2, rtol=2e-2) for o, e in zip(outputs, expected))
            ms = time_ms(fn) if ok else float("nan")
        except Exception as exc:  # noqa: BLE001 - a config that does not compile or fit is skipped
            ok, ms = False, float("nan")
            candidate["error"] = type(exc).__name__
        finally:
            for module, original in zip(target.modules, originals):
                module.launch_config = original
        results.append({**candidate, "ms": ms, "ok": ok, "default": all(default.get(n) == candidate[n] for n in names)})
    valid = [r for r in results if r["ok"]]
    best = min(valid, key=lambda r: r["ms"]) if valid else None
    speedup = shipped_ms / best["ms"] if best else float("nan")
    print(f"{label:36} {kernel:5} shipped {shipped_ms:8.4f} ms  "
          f"best {best['ms'] if best else float('nan'):8.4f} ms ({speedup:.2f}x) {best}", flush=True)
    return {"shape": label, "kernel": kernel, "default": default, "shipped_ms": shipped_ms, "best": best,
            "all": results}


TARGETS = {"norm": _norm_target, "attention": _attention_target, "window_attention": _window_target, "clip_loss": _clip_target,
           "patch_embed": _patch_embed_target, "mlp": _mlp_target}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", default=",".join(TARGETS))
    parser.add_argument("--shapes", help="comma-separated substrings of the shape labels")
    parser.add_argument("--kernels", help="comma-separated kernel names (default: every kernel of the op)")
    parser.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                        help="replace one key's candidate values (integers or True/False), e.g. --grid num_stages=1; "
                             "repeatable: a smaller grid for a short device call")
    parser.add_argument("--out", default="tuning.json")
    args = parser.parse_args()
    grid = dict(_grid_override(item) for item in args.grid)
    if not torch.cuda.is_available():
        print("tools/tune.py needs a CUDA GPU")
        return 2
    wanted = args.shapes.split(",") if args.shapes else None
    report = []
    for op in args.ops.split(","):
        target = TARGETS[op]()
        kernels = args.kernels.split(",") if args.kernels else list(target.candidates)
        for values in target.candidates.values():
            values.update({key: grid[key] for key in grid if key in values})
        for label, spec in target.shapes.items():
            if wanted and not any(w in label for w in wanted):
                continue
            for kernel in kernels:
                if kernel not in target.candidates:
                    continue
                try:
                    report.append({"op": op, **tune(target, label, spec, kernel)})
                except Exception as exc:  # noqa: BLE001 - one shape's failure is a line, not the end
                    report.append({"op": op, "shape": label, "kernel": kernel, "error": f"{type(exc).__name__}: {exc}"})
                    print(f"{label:36} {kernel:5} failed: {type(exc).__name__}: {exc}", flush=True)
                _write(report, args.out)  # as it goes: a killed run keeps its results
                if not _gpu_usable():
                    print("the GPU is unusable (a sticky CUDA error): stopping")
                    return 1
    print(f"written {args.out}")
    return 0


def _grid_override(item: str) -> tuple:
    """'BLOCK_M=16,32' -> ('BLOCK_M', (16, 32)); 'TMA=False' -> ('TMA', (False,))."""
    key, _, values = item.partition("=")
    parse = {"True": True, "False": False}
    return key, tuple(parse[v] if v in parse else int(v) for v in values.split(","))


def _write(report: list, path: str) -> None:
    """Replaces ``path`` whole (a kill mid-write leaves the previous file, not a truncated one)."""
    with open(path + ".tmp", "w") as f:
        json.dump(report, f, indent=1, default=str)
    os.replace(path + ".tmp", path)


def _gpu_usable() -> bool:
    try:
        torch.cuda.synchronize()
        return True
    except Exception:  # noqa: BLE001 - any failure here means the context is gone
        return False


if __name__ == "__main__":
    sys.exit(main())
