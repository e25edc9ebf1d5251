"""Swin window attention benchmark: every Swin-T and Swin-B stage (224 px, window 7, shifted
blocks) at B=64 and B=256, forward and forward+backward, from the qkv Linear's output to the
proj Linear's input. Peers, each given timm's buffers (the relative-position index and the shift
mask, built once per case as timm registers them): timm-style eager in the activation dtype (roll,
partition, bias gather, dense mask, softmax, reverse, roll back: timm's WindowAttention without
fused attention), the same under torch.compile, SDPA with the dense bias + mask, FlexAttention
with the bias and mask as a score_mod over the partitioned windows.

Also Swin patch merging (2x2 gather + LayerNorm(4C)) at the three merges of Swin-T and Swin-B,
against timm's eager gather + F.layer_norm and its torch.compile."""

from __future__ import annotations

import torch

import vtkernels
from benchmarks.harness import BenchCase
from vtkernels.reference import window_attention as ref

DTYPE = torch.bfloat16
WINDOW = 7
STAGES = {  # name: (H = W, C, heads)
    "Swin-T s1": (56, 96, 3), "Swin-T s2": (28, 192, 6), "Swin-T s3": (14, 384, 12), "Swin-T s4": (7, 768, 24),
    "Swin-B s1": (56, 128, 4), "Swin-B s2": (28, 256, 8), "Swin-B s3": (14, 512, 16), "Swin-B s4": (7, 1024, 32),
}
BATCHES = (64, 256)


def _windows(x, window, shift):
    """timm's roll + partition: (B, H, W, C') -> (B * nW, N, C')."""
    if shift:
        x = torch.roll(x, (-shift, -shift), (1, 2))
    return ref.window_partition(x, window).flatten(1, 2)


def _unwindows(o, b, h, w, window, shift):
    o = ref.window_reverse(o.view(-1, window, window, o.shape[-1]), window, h, w)
    return torch.roll(o, (shift, shift), (1, 2)) if shift else o


def _buffers(size, window, shift):
    """timm's registered buffers: the (N, N) relative-position index and the (nW, N, N) shift mask
    (None unshifted) in the activation dtype."""
    index = ref.relative_position_index(window).cuda()
    mask = ref.shift_mask(size, size, window, shift, device="cuda", dtype=DTYPE) if shift else None
    return index, mask


def _heads(qkv, heads, window, shift):
    """q, k, v (B * nW, heads, N, d) of the rolled, partitioned map."""
    b, h, w, c3 = qkv.shape
    x = _windows(qkv, window, shift).view(-1, window * window, 3, heads, c3 // 3 // heads)
    return x.permute(2, 0, 3, 1, 4).unbind(0)


def _bias(table, index, heads, dtype):
    """(heads, N, N) relative-position bias gathered from the table, as timm does per call."""
    n = index.shape[0]
    return table[index.view(-1)].view(n, n, heads).permute(2, 0, 1).to(dtype)


def _timm_style(qkv, table, heads, window, shift, buffers):
    index, mask = buffers
    b, h, w, c3 = qkv.shape
    q, k, v = _heads(qkv, heads, window, shift)
    attn = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1) + _bias(table, index, heads, qkv.dtype)[None]
    if mask is not None:
        n = attn.shape[-1]
        attn = (attn.view(-1, mask.shape[0], heads, n, n) + mask[None, :, None]).view(-1, heads, n, n)
    o = attn.softmax(-1) @ v
    return _unwindows(o.transpose(1, 2).flatten(2), b, h, w, window, shift)


def _sdpa(qkv, table, heads, window, shift, buffers):
    index, mask = buffers
    b, h, w, c3 = qkv.shape
    q, k, v = _heads(qkv, heads, window, shift)
    dense = _bias(table, index, heads, qkv.dtype)[None]
    if mask is not None:  # (B * nW, heads, N, N): the shift mask repeated per image
        dense = (dense + mask[:, None]).repeat(b, 1, 1, 1)
    o = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=dense)
    return _unwindows(o.transpose(1, 2).flatten(2), b, h, w, window, shift)


def _flex():
    from torch.nn.attention.flex_attention import flex_attention

    compiled = torch.compile(flex_attention, dynamic=False)

    def run(qkv, table, heads, window, shift, buffers):
        index, mask = buffers
        b, h, w, c3 = qkv.shape
        q, k, v = _heads(qkv, heads, window, shift)
        if mask is None:
            def score_mod(score, batch, head, qi, ki):
                return score + table[index[qi, ki], head]
        else:
            n_win = mask.shape[0]

            def score_mod(score, batch, head, qi, ki):
                return score + table[index[qi, ki], head] + mask[batch % n_win, qi, ki]

        o = compiled(q, k, v, score_mod=score_mod)
        return _unwindows(o.transpose(1, 2).flatten(2), b, h, w, window, shift)
    return run


def _vtkernels(backend):
    def run(qkv, table, heads, window, shift, buffers):
        return vtkernels.window_attention(qkv, table, heads, window, shift, backend=backend)
    return run


def _providers():
    providers = {
        "vtkernels-triton": _vtkernels("triton"),
        "vtkernels-cuda": _vtkernels("cuda"),
        "timm-eager": _timm_style,
        "timm-eager.compile": torch.compile(_timm_style, dynamic=False),
        "sdpa-dense-mask": _sdpa,
    }
    try:
        providers["flex"] = _flex()
    except Exception:  # noqa: BLE001 - FlexAttention missing in this torch: no record
        pass
    return providers


def _make(fn, batch, size, channels, heads, shift, backward, holder):
    def make():
        qkv = torch.randn(batch, size, size, 3 * channels, device="cuda", dtype=DTYPE, requires_grad=backward)
        table = torch.randn((2 * WINDOW - 1) ** 2, heads, device="cuda", dtype=torch.float32, requires_grad=backward)
        buffers = _buffers(size, WINDOW, shift)
        if not backward:
            return lambda: fn(qkv, table, heads, WINDOW, shift, buffers)
        dout = torch.randn(batch, size, size, channels, device="cuda", dtype=DTYPE)
        holder[:] = [qkv, table]
        return lambda: fn(qkv, table, heads, WINDOW, shift, buffers).backward(dout)
    return make


def cases(quick: bool = False):
    yield from merge_cases(quick)
    size_of = torch.tensor([], dtype=DTYPE).element_size()
    stages = dict(list(STAGES.items())[:1]) if quick else STAGES
    providers = _providers()
    for name, (size, channels, heads) in stages.items():
        shift = WINDOW // 2 if size > WINDOW else 0
        for batch in BATCHES[:1] if quick else BATCHES:
            label = f"{name} B={batch} {size}x{size}x{channels} h{heads}" + (" shifted" if shift else "")
            tokens = batch * size * size
            flops = 4 * tokens * WINDOW * WINDOW * channels  # QK^T and PV over each token's window
            bytes_fwd = tokens * 4 * channels * size_of      # read qkv, write out
            for provider, fn in providers.items():
                yield BenchCase("window_attention", label, "fwd", provider,
                                _make(fn, batch, size, channels, heads, shift, False, []),
                                bytes=bytes_fwd, flops=flops, baseline="timm-eager")
                holder: list = []
                yield BenchCase("window_attention", label, "fwd+bwd", provider,
                                _make(fn, batch, size, channels, heads, shift, True, holder),
                                bytes=3 * bytes_fwd, flops=3.5 * flops, baseline="timm-eager",
                                grad_to_none=lambda holder=holder: holder)


MERGES = {"Swin-T m1": (56, 96), "Swin-T m2": (28, 192), "Swin-T m3": (14, 384),
          "Swin-B m1": (56, 128), "Swin-B m2": (28, 256), "Swin-B m3": (14, 512)}


def _merge_eager(x, w, b):
    return torch.nn.functional.layer_norm(ref.patch_merging_gather(x), (w.shape[0],), w, b)


def _merge_make(fn, batch, size, channels, backward, holder):
    def make():
        x = torch.randn(batch, size, size, channels, device="cuda", dtype=DTYPE, requires_grad=backward)
        w = torch.randn(4 * channels, device="cuda", dtype=DTYPE, requires_grad=backward)
        b = torch.randn(4 * channels, device="cuda", dtype=DTYPE, requires_grad=backward)
        if not backward:
            return lambda: fn(x, w, b)
        dy = torch.randn(batch, size // 2, size // 2, 4 * channels, device="cuda", dtype=DTYPE)
        holder[:] = [x, w, b]
        return lambda: fn(x, w, b).backward(dy)
    return make


def merge_cases(quick: bool = False):
    size_of = torch.tensor([], dtype=DTYPE).element_size()
    providers = {
        "vtkernels-triton": lambda x, w, b: vtkernels.patch_merging_norm(x, w, b, backend="triton"),
        "vtkernels-cuda": lambda x, w, b: vtkernels.patch_merging_norm(x, w, b, backend="cuda"),
        "timm-eager": _merge_eager,
        "timm-eager.compile": torch.compile(_merge_eager, dynamic=False),
    }
    for name, (size, channels) in (list(MERGES.items())[:1] if quick else MERGES.items()):
        for batch in BATCHES[:1] if quick else BATCHES:
            label = f"{name} B={batch} {size}x{size}x{channels}"
            elements = batch * size * size * channels
            for provider, fn in providers.items():
                yield BenchCase("patch_merging_norm", label, "fwd", provider,
                                _merge_make(fn, batch, size, channels, False, []), bytes=2 * elements * size_of,
                                baseline="timm-eager")
                holder: list = []
                yield BenchCase("patch_merging_norm", label, "fwd+bwd", provider,
                                _merge_make(fn, batch, size, channels, True, holder), bytes=5 * elements * size_of,
                                baseline="timm-eager", grad_to_none=lambda holder=holder: holder)
