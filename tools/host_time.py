"""Host time per op call with the Triton kernel launches stubbed out (CPU, no GPU needed).

On a GPU, a call whose kernels finish faster than the host issues them is host-bound (CLIP text,
DETR at batch 8): what counts there is the Python around the launches (validation, dispatch,
launch setup, autograd). This tool measures that part on any machine: every Triton kernel in
``vtkernels.triton`` is replaced by a no-op launch, the Triton backend runs on CPU tensors (the
interpreter's dispatch path: fp16), and each case is called back to back. What it leaves out is
Triton's own launcher (argument binding, specialization key, the driver call), which needs a GPU:
``--gpu`` times the real calls on CUDA tensors instead (small shapes, so the host stays the
bottleneck), launcher and allocations included.

    python tools/host_time.py            # every case, microseconds per call (best of 5 rounds)
    python tools/host_time.py --profile attention_detr_cross   # plus cProfile of one case
    python tools/host_time.py --gpu --profile layer_norm       # on a GPU: real launches
    python tools/host_time.py --backend cuda   # the CUDA backend: csrc built for the CPU emulator
                                               # (tools/cuda_emulator), its launches no-ops
"""

from __future__ import annotations

import argparse
import cProfile
import importlib
import os
import pkgutil
import pstats
import sys
import time

ON_GPU = "--gpu" in sys.argv
if not ON_GPU:
    os.environ["TRITON_INTERPRET"] = "1"  # CPU tensors reach the Triton backend (set before triton loads)
    os.environ["VTK_EMU_NO_LAUNCH"] = "1"  # the emulated CUDA backend's launches do nothing (--backend cuda)

import torch  # noqa: E402

import vtkernels  # noqa: E402
import vtkernels.triton  # noqa: E402


class _NoLaunch:
    """Stands in for a Triton kernel: ``kernel[grid](*args)`` does nothing."""

    def __getitem__(self, grid):
        return lambda *args, **kwargs: None


def stub_triton_kernels() -> int:
    """Replaces every Triton kernel object in the vtkernels.triton modules; returns how many."""
    stubbed = 0
    for info in pkgutil.iter_modules(vtkernels.triton.__path__):
        module = importlib.import_module(f"vtkernels.triton.{info.name}")
        for name, obj in list(vars(module).items()):
            if type(obj).__name__ in ("JITFunction", "InterpretedFunction", "Autotuner"):
                setattr(module, name, _NoLaunch())
                stubbed += 1
    return stubbed


def force_tma() -> list:
    """Turns on attention's TMA choice (off under the interpreter), so that the descriptor set-up
    which sm_90 launches pay is timed too; returns the list each descriptor built is counted in."""
    import vtkernels.triton.attention as triton_attention

    original_config, original_descriptor, built = triton_attention.launch_config, triton_attention.descriptor, []

    def config(head_dim, dtype, kernel, n=None):
        cfg = original_config(head_dim, dtype, kernel, n)
        return {**cfg, "TMA": dtype != torch.float32} if "TMA" in cfg else cfg

    def counted_descriptor(*args):
        built.append(1)
        return original_descriptor(*args)
    triton_attention.launch_config, triton_attention.descriptor = config, counted_descriptor
    return built


def use_emulated_extension() -> None:
    """The CUDA backend on CPU tensors: csrc's bindings and kernels built for the CPU emulator."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "cuda_emulator"))
    import build

    build.install()


def _cases(backend: str) -> dict:
    """name -> (callable, tensors whose .grad is reset per call). Small shapes: the host work does
    not depend on them, and CPU allocations of real sizes would dominate."""
    half = torch.float16
    device = "cuda" if ON_GPU else "cpu"

    def leaf(*shape):
        return torch.randn(*shape, dtype=half, device=device, requires_grad=True)

    x, w, b, res = leaf(2, 8, 768), leaf(768), leaf(768), leaf(2, 8, 768)
    q, k, v = leaf(2, 8, 100, 32), leaf(2, 8, 850, 32), leaf(2, 8, 850, 32)
    mask = torch.zeros(2, 850, dtype=torch.bool, device=device)
    qkv = leaf(2, 77, 3, 8, 64)
    tokens, fc1_w, fc1_b, fc2_w, fc2_b = leaf(16, 64), leaf(256, 64), leaf(256), leaf(64, 256), leaf(64)
    tri = dict(backend=backend)
    from vtkernels.models.blocks import Block

    block = Block(64, 2, 256, backend=backend).to(device, half)  # a ViT block: 2 norms, qkv, attention, proj, MLP
    tokens_in = leaf(2, 8, 64)
    window_qkv, table = leaf(1, 14, 14, 3 * 96), leaf(13 * 13, 3)  # Swin-T stage 1's window 7, 3 heads
    # Whole models at batch 1: Swin-T and ViT-B/16 (on the CPU 1/4 of the width, in fp32: the same
    # calls, with less CPU matmul time in the way; fp16 on the CUDA backend, whose GEMMs are 16-bit).
    from vtkernels.models import Swin, ViT

    narrow, model_dtype = (1, half) if ON_GPU else (4, torch.float32 if backend == "triton" else half)
    swin_t = Swin.from_size("T", embed_dim=96 // narrow, backend=backend).to(device, model_dtype).eval()
    vit_b = ViT("B/16", embed_dim=768 // narrow, mlp_dim=3072 // narrow, num_heads=12 // narrow,
                backend=backend).to(device, model_dtype).eval()
    image = torch.randn(1, 3, 224, 224, dtype=model_dtype, device=device)

    def backward(fn, *leaves):
        grad = torch.ones_like(fn().detach())  # made once: the timed calls hold only the op's own work

        def run():
            fn().backward(grad)
        return run, leaves

    def forward(fn):
        def run():
            with torch.no_grad():
                fn()
        return run, ()

    layer_norm = lambda: vtkernels.layer_norm(x, w, b, **tri)  # noqa: E731
    layer_norm_res = lambda: vtkernels.layer_norm(x, w, b, residual=res, **tri)[0]  # noqa: E731
    cross = lambda: vtkernels.attention(q, k, v, key_padding_mask=mask, **tri)  # noqa: E731
    causal_qkv = lambda: vtkernels.attention_qkv(qkv, causal=True, **tri)  # noqa: E731
    mlp = lambda: vtkernels.mlp(tokens, fc1_w, fc1_b, fc2_w, fc2_b, **tri)  # noqa: E731
    vit_block = lambda: block(tokens_in)  # noqa: E731
    shifted_window = lambda: vtkernels.window_attention(window_qkv, table, 3, 7, 3, **tri)  # noqa: E731
    return {
        "layer_norm": forward(layer_norm),
        "layer_norm_residual": forward(layer_norm_res),
        "attention_detr_cross": forward(cross),
        "attention_qkv_causal": forward(causal_qkv),
        "mlp": forward(mlp),
        "vit_block": forward(vit_block),
        "window_attention": forward(shifted_window),
        "swin_t": forward(lambda: swin_t(image)),
        "vit_b": forward(lambda: vit_b(image)),
        "layer_norm+bwd": backward(layer_norm, x, w, b),
        "attention_detr_cross+bwd": backward(cross, q, k, v),
        "attention_qkv_causal+bwd": backward(causal_qkv, qkv),
        "mlp+bwd": backward(mlp, tokens, fc1_w, fc1_b, fc2_w, fc2_b),
        "vit_block+bwd": backward(vit_block, tokens_in, *block.parameters()),
        "window_attention+bwd": backward(shifted_window, window_qkv, table),
    }


def time_us(fn, grads, calls: int, rounds: int = 5) -> float:
    """The fastest of ``rounds`` rounds, in mean microseconds per call (the least disturbed by
    other work on the machine)."""
    for _ in range(max(calls // 10, 5)):
        fn()
    means = []
    for _ in range(rounds):
        if ON_GPU:
            torch.cuda.synchronize()  # each round starts with an empty queue
        start = time.perf_counter()
        for _ in range(calls):
            for t in grads:
                t.grad = None
            fn()
        means.append((time.perf_counter() - start) / calls * 1e6)
    return min(means)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=500, help="calls per round (default 500)")
    parser.add_argument("--only", help="comma-separated case names")
    parser.add_argument("--profile", help="a case to run under cProfile after timing")
    parser.add_argument("--tma", action="store_true", help="attention builds TMA descriptors, as on sm_90")
    parser.add_argument("--gpu", action="store_true", help="real launches on CUDA tensors (no stubs)")
    parser.add_argument("--backend", choices=("triton", "cuda"), default="triton",
                        help="the kernel backend of every case (default triton)")
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.gpu:
        print(f"real launches on {torch.cuda.get_device_name()}; torch {torch.__version__}, {os.cpu_count()} CPUs")
    elif args.backend == "cuda":
        use_emulated_extension()
        print(f"CUDA backend emulated, launches no-ops; torch {torch.__version__}, {os.cpu_count()} CPUs")
    else:
        print(f"{stub_triton_kernels()} Triton kernels stubbed; torch {torch.__version__}, {os.cpu_count()} CPUs")
    built = force_tma() if args.tma and not args.gpu else None
    cases = _cases(args.backend)
    for name in (args.only.split(",") if args.only else cases):
        fn, grads = cases[name]
        print(f"{name:28s} {time_us(fn, grads, args.calls):7.1f} us")
    if built is not None:
        print(f"TMA descriptors built: {len(built)}")
    if args.profile:
        fn, grads = cases[args.profile]
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(args.calls):
            for t in grads:
                t.grad = None
            fn()
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(30)


if __name__ == "__main__":
    main()
