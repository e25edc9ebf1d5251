"""Swin window attention: reference vs HF transformers and timm's mask procedure, kernels vs the
float64 reference (forward, d qkv, d bias table, d pad_qkv), custom ops, torch.compile, modules,
dispatch and bad input. Patch merging lives in test_patch_merging.py."""

import re
import sys
from types import SimpleNamespace

import pytest
import torch

import vtkernels
from vtkernels.reference import window_attention as ref
from vtkernels.testing import assert_close, grads, upcast

HAS_CUDA = torch.cuda.is_available()
CPU_DTYPES = [torch.float32, torch.float16]
GPU_DTYPES = [torch.float32, torch.float16, torch.bfloat16]

# (B, H, W, heads, head_dim, window, shift, pad_first, with pad_qkv)
CASES = [
    (2, 14, 14, 2, 32, 7, 3, False, False),   # shifted, 4 windows, one per tile
    (1, 14, 21, 1, 32, 7, 0, False, False),   # unshifted, odd number of windows
    (1, 9, 11, 2, 16, 7, 3, False, True),     # odd map: padding, timm order (roll, pad)
    (1, 9, 11, 2, 16, 7, 3, True, True),      # odd map: HF order (pad, roll)
    (1, 5, 9, 2, 16, 7, 3, False, True),      # window larger than the map: shrinks to 5, unshifted
    (1, 24, 24, 1, 32, 12, 6, False, False),  # window 12: keys 128 + 16, query rows 2 x 64 + 16
    (1, 15, 26, 2, 16, 12, 6, True, True),    # window 12 with padding (HF order): padding in the 16-key rest
    (1, 14, 14, 1, 64, 7, 3, False, False),   # head_dim 64
    (1, 27, 14, 1, 16, 7, 3, False, True),    # 4 window pairs: backward loops 3 per program, ragged end
    (1, 12, 8, 2, 16, 4, 2, False, False),    # window 4 (16 tokens): 4 per tile
]


def make_inputs(b, h, w, heads, head_dim, window, with_pad, dtype, device):
    c = heads * head_dim
    qkv = torch.randn(b, h, w, 3 * c, device=device).to(dtype).requires_grad_()
    table = torch.randn((2 * window - 1) ** 2, heads, device=device).to(dtype).requires_grad_()
    pad = torch.randn(3 * c, device=device).to(dtype).requires_grad_() if with_pad else None
    return qkv, table, pad


def check_against_reference(case, dtype, device, backend, mask_value=-100.0, qkv_transform=None, cot_scale=1.0):
    b, h, w, heads, head_dim, window, shift, pad_first, with_pad = case
    qkv, table, pad = make_inputs(b, h, w, heads, head_dim, window, with_pad, dtype, device)
    inputs = [qkv, table, pad]
    used = qkv_transform(qkv) if qkv_transform else qkv

    def run(q, t, p, which):
        return vtkernels.window_attention(q, t, heads, window, shift, None, mask_value, which, pad_qkv=p,
                                          pad_first=pad_first)

    out = run(used, table, pad, backend)
    cot = torch.randn_like(out) * cot_scale
    ours = grads(out, inputs, cot)
    q64, t64, p64 = upcast(*inputs)
    out64 = run(qkv_transform(q64) if qkv_transform else q64, t64, p64, "reference")
    expected = grads(out64, [q64, t64, p64], cot)
    peer = run(used.detach(), table.detach(), None if pad is None else pad.detach(), "reference")
    assert_close(out, out64, dtype, names=["out"], same_dtype_ref=peer)
    kept = [i for i, t in enumerate(inputs) if t is not None]
    tol = None if dtype == torch.float32 else 2e-2
    assert_close([ours[i] for i in kept], [expected[i] for i in kept], dtype,
                 names=[["dqkv", "dtable", "dpad_qkv"][i] for i in kept], tol=tol)


# --- the reference against HF transformers and timm's procedure ---------------------------------

def _hf_layer(dim, heads, window, resolution, shift):
    transformers = pytest.importorskip("transformers")
    from transformers.models.swin.modeling_swin import SwinLayer

    config = transformers.SwinConfig(embed_dim=dim, window_size=window, num_heads=[heads], depths=[1])
    layer = SwinLayer(config, dim, resolution, heads, shift_size=shift).double().eval()
    with torch.no_grad():
        layer.attention.relative_position_bias.relative_position_bias_table.normal_()
    return layer


@pytest.mark.parametrize("height, width, shift", [(14, 14, 3), (14, 14, 0), (9, 11, 3), (7, 10, 3), (10, 7, 0)])
def test_reference_matches_hf_swin_layer(height, width, shift):
    dim, heads, window = 24, 3, 7
    layer = _hf_layer(dim, heads, window, (height, width), shift)
    x = torch.randn(2, height * width, dim, dtype=torch.float64)
    expected = layer(x, (height, width))[0]
    attn = layer.attention
    qkv = torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight])
    qkv_bias = torch.cat([attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias])
    h = torch.nn.functional.linear(layer.layernorm_before(x).view(2, height, width, dim), qkv, qkv_bias)
    table = attn.relative_position_bias.relative_position_bias_table
    o = ref.window_attention(h, table, heads, window, shift, pad_qkv=qkv_bias, pad_first=True)
    y = x + attn.o_proj(o).view_as(x)
    y = y + layer.mlp(layer.layernorm_after(y))
    # HF's eager softmax runs in float32, hence the bound.
    assert (y - expected).abs().max().item() < 1e-6


def _timm_shift_mask(height_pad, width_pad, window, shift):
    """timm's SwinTransformerBlock.get_attn_mask, transcribed (slice loop)."""
    img = torch.zeros(1, height_pad, width_pad, 1)
    cnt = 0
    for hs in ((0, -window), (-window, -shift), (-shift, None)):
        for ws in ((0, -window), (-window, -shift), (-shift, None)):
            img[:, hs[0]:hs[1], ws[0]:ws[1], :] = cnt
            cnt += 1
    windows = ref.window_partition(img, window).view(-1, window * window)
    mask = windows.unsqueeze(1) - windows.unsqueeze(2)
    return mask.masked_fill(mask != 0, -100.0).masked_fill(mask == 0, 0.0)


@pytest.mark.parametrize("height_pad, width_pad, window, shift", [(14, 14, 7, 3), (28, 21, 7, 3), (24, 24, 12, 6)])
def test_reference_shift_mask_matches_timm(height_pad, width_pad, window, shift):
    assert torch.equal(ref.shift_mask(height_pad, width_pad, window, shift), _timm_shift_mask(height_pad, width_pad, window, shift))


def test_reference_relative_position_index_matches_hf():
    pytest.importorskip("transformers")
    from transformers.models.swin.modeling_swin import SwinRelativePositionBias

    hf = SwinRelativePositionBias(2, (7, 7))
    assert torch.equal(ref.relative_position_index(7).flatten(), hf.relative_position_index)


# --- kernels vs the float64 reference ------------------------------------------------------------

@pytest.mark.parametrize("dtype", CPU_DTYPES)
@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c[:7])) + ("-hf" if c[7] else "") + ("-pad" if c[8] else ""))
def test_triton_matches_reference(case, dtype, device):
    check_against_reference(case, dtype, device, "triton")


@pytest.mark.parametrize("case", [CASES[0], CASES[5], CASES[8], CASES[9]], ids=["w7", "w12", "ragged", "w4"])
def test_triton_forward_loops_over_window_groups(case, device, monkeypatch):
    """GROUPS = 3 window groups per forward program (ragged: the last program's run past the end),
    sharing one bias gather where a group fits one query chunk (w7, w4), not where it does not (w12)."""
    from vtkernels.triton import window_attention as triton_window

    original = triton_window.launch_config

    def three_groups(tokens, head_dim, backward=False, **kwargs):
        return {**original(tokens, head_dim, backward, **kwargs), **({} if backward else {"GROUPS": 3})}
    monkeypatch.setattr(triton_window, "launch_config", three_groups)
    check_against_reference(case, torch.float32, device, "triton")


@pytest.fixture
def gpu_dot_precision(monkeypatch, device):
    """The interpreter computes every fp32 tl.dot exactly, whatever its input_precision: make it
    round like sm_90's tensor cores instead, so that a dot left at tf32 shows up on the CPU.
    "tf32": operands truncated to tf32 (10 mantissa bits); "tf32x3": Triton's split (big =
    round(x) to tf32, small = x - big truncated, small*big + big*small + big*big). On a GPU the
    hardware does this itself. Returns the precisions of the fp32 dots the kernels issued."""
    seen = set()
    if device.type != "cpu":
        return seen
    import numpy as np
    from triton._C.libtriton import ir
    from triton.runtime import interpreter

    def tf32(x, rounded=False):
        bits = x.astype(np.float32).view(np.uint32) + np.uint32(0x1000 if rounded else 0)
        return (bits & np.uint32(0xFFFFE000)).view(np.float32)

    exact = interpreter.InterpreterBuilder.create_dot

    def create_dot(self, a, b, acc, input_precision, max_num_imprecise_acc):
        if a.data.dtype != np.float32 or input_precision == ir.INPUT_PRECISION.IEEE:
            seen.add(str(input_precision) if a.data.dtype == np.float32 else "not fp32")
            return exact(self, a, b, acc, input_precision, max_num_imprecise_acc)
        seen.add(str(input_precision))
        if input_precision == ir.INPUT_PRECISION.TF32x3:
            a_big, b_big = tf32(a.data, rounded=True), tf32(b.data, rounded=True)
            a_small, b_small = tf32(a.data - a_big), tf32(b.data - b_big)
            out = (a_small @ b_big + a_big @ b_small) + a_big @ b_big
        else:
            out = tf32(a.data) @ tf32(b.data)
        return interpreter.TensorHandle(out.astype(np.float32) + acc.data, acc.dtype.scalar)

    monkeypatch.setattr(interpreter.InterpreterBuilder, "create_dot", create_dot)
    return seen


@pytest.mark.parametrize("case", [CASES[0], CASES[2], CASES[7]], ids=["shifted", "padded", "ragged"])
def test_triton_fp32_is_fp32_accurate_with_gpu_dot_rounding(case, device, gpu_dot_precision):
    # fp32 inputs must take exact fp32 dots everywhere, the bias-table fold included: its dS
    # mostly cancel, so a tf32 dot there costs ~5e-4 on d table (the default bound is 1e-5).
    check_against_reference(case, torch.float32, device, "triton")
    if device.type == "cpu":
        assert gpu_dot_precision == {"INPUT_PRECISION.IEEE"}  # the fixture saw the kernels' dots


def test_triton_dense_bias_tiles_follow_the_table(device):
    """The forward reuses its bias tiles (one window per tile) while the table is unchanged; an
    in-place update, a new storage or another mask value rebuilds them."""
    b, h, w, heads, head_dim, window, shift, _, _ = CASES[0]
    qkv, table, _ = make_inputs(b, h, w, heads, head_dim, window, False, torch.float32, device)
    qkv, table = qkv.detach(), table.detach()

    def check(mask_value=-100.0):
        out = vtkernels.window_attention(qkv, table, heads, window, shift, None, mask_value, "triton")
        expected = vtkernels.window_attention(qkv.double(), table.double(), heads, window, shift, None, mask_value,
                                              "reference")
        assert_close(out, expected, torch.float32)

    check()
    check()  # (reused)
    table.mul_(3.0)  # in place: a new version
    check()
    table.data = torch.randn_like(table)  # a new storage, same version counter
    check()
    check(mask_value=-7.0)


def test_triton_dense_bias_tiles_from_inference_tensors(device):
    """Inference tensors have no version counter: tiles built from such a table are not reused,
    so an in-place update (allowed under inference_mode) still shows."""
    b, h, w, heads, head_dim, window, shift, _, _ = CASES[0]
    with torch.inference_mode():
        qkv, table, _ = make_inputs(b, h, w, heads, head_dim, window, False, torch.float32, device)
        for _ in range(2):
            out = vtkernels.window_attention(qkv, table, heads, window, shift, backend="triton")
            expected = vtkernels.window_attention(qkv.double(), table.double(), heads, window, shift,
                                                  backend="reference")
            assert_close(out, expected, torch.float32)
            table.mul_(3.0)


def test_triton_hard_mask(device):
    check_against_reference(CASES[0], torch.float32, device, "triton", mask_value=float("-inf"))


def test_triton_tiny_gradients_keep_their_precision(device):
    # A deep network's gradients can be ~1e-7: the on-chip bias fold must not underflow them.
    check_against_reference(CASES[2], torch.float32, device, "triton", cot_scale=1e-7)


def test_triton_non_contiguous_qkv(device):
    # qkv as a channel slice of a wider tensor, and with H and W strides swapped.
    check_against_reference(CASES[2], torch.float32, device, "triton", qkv_transform=lambda t: torch.cat([t, t], -1)[..., : t.shape[-1]])
    check_against_reference(CASES[0], torch.float32, device, "triton",
                            qkv_transform=lambda t: t.transpose(1, 2).contiguous().transpose(1, 2))


def test_empty_batch(device):
    qkv, table, _ = make_inputs(0, 14, 14, 2, 16, 7, False, torch.float32, device)
    out = vtkernels.window_attention(qkv, table, 2, 7, 3, backend="triton")
    assert out.shape == (0, 14, 14, 32)
    out.sum().backward()
    assert qkv.grad.shape == qkv.shape and torch.count_nonzero(table.grad) == 0


def test_padding_without_pad_qkv_means_zero_tokens(device):
    qkv, table, _ = make_inputs(1, 9, 11, 2, 16, 7, False, torch.float32, device)
    zeros = torch.zeros(qkv.shape[-1], device=device)
    a = vtkernels.window_attention(qkv, table, 2, 7, 3, backend="triton")
    b = vtkernels.window_attention(qkv, table, 2, 7, 3, backend="reference", pad_qkv=zeros)
    assert_close(a, b.double(), torch.float32)


# --- GPU -----------------------------------------------------------------------------------------

SWIN_STAGES = [  # (B, H, W, heads, window): Swin-T stages at 224, Swin-B stage 1 at 384 (window 12)
    (4, 56, 56, 3, 7), (4, 28, 28, 6, 7), (4, 14, 14, 12, 7), (4, 7, 7, 24, 7), (2, 96, 96, 4, 12),
]


def _cuda_takes(window, head_dim):
    return window * window <= 144 and head_dim <= 64


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "cuda"])
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize("case", CASES)
def test_gpu_kernels_match_reference(case, dtype, backend):
    if backend == "cuda" and not _cuda_takes(case[5], case[4]):
        pytest.skip("the CUDA kernel takes windows of <= 144 tokens")
    check_against_reference(case, dtype, torch.device("cuda"), backend)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "cuda"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("stage", SWIN_STAGES)
def test_gpu_swin_stage_shapes(stage, dtype, backend):
    b, h, w, heads, window = stage
    if backend == "cuda" and not _cuda_takes(window, 32):
        pytest.skip("the CUDA kernel takes windows of <= 144 tokens")
    check_against_reference((b, h, w, heads, 32, window, window // 2, False, False), dtype, torch.device("cuda"), backend)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "cuda"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])  # fp16 itself cannot hold 1e-7 gradients
def test_gpu_tiny_gradients_keep_their_precision(dtype, backend):
    check_against_reference(CASES[2], dtype, torch.device("cuda"), backend, cot_scale=1e-7)


@pytest.mark.gpu
@pytest.mark.extension
def test_gpu_cuda_refuses_big_windows_with_a_reason():
    qkv, table, _ = make_inputs(1, 26, 26, 1, 32, 13, False, torch.float16, torch.device("cuda"))
    with pytest.raises(vtkernels.BackendError, match="144"):
        vtkernels.window_attention(qkv, table, 1, 13, 6, backend="cuda")


def test_shared_memory_refusal_is_a_compile_time_constant(monkeypatch):
    """torch.compile runs the refusal's extension query once while tracing, as a constant: Dynamo
    cannot trace the pybind function (faked by one that calls a builtin Dynamo skips)."""
    from vtkernels.ops import window_attention as op

    def query(window, head_dim, backward, device):
        sys.getrefcount(query)  # untraceable, as the extension's function is
        return 162_880, 101_376

    monkeypatch.setattr(op, "load_extension", lambda: SimpleNamespace(window_attention_shared_memory=query))
    op.cuda_shared_memory.cache_clear()
    try:
        def refused(x):
            return x + (1 if op.cuda_shared_memory_refusal(0, 12, 64, True) else 0)

        torch._dynamo.reset()
        assert torch.compile(refused, fullgraph=True)(torch.zeros(1)).item() == 1
    finally:
        op.cuda_shared_memory.cache_clear()


@pytest.mark.gpu
@pytest.mark.extension
def test_gpu_cuda_refuses_blocks_beyond_the_gpus_shared_memory(monkeypatch):
    from vtkernels._extension import load_extension
    from vtkernels.ops import window_attention as op

    needed, available = load_extension().window_attention_shared_memory(12, 64, True, 0)
    assert 160_000 < needed <= available  # window_attention.h: sm_80 / sm_90 hold the 12x12, d = 64 backward
    inference_needs = load_extension().window_attention_shared_memory(12, 64, False, 0)[0]
    assert inference_needs < needed  # 118,592 B and 162,880 B on the H200
    # As on a part whose limit lies between the two: training is refused with the numbers,
    # inference is not. (The 99 KB parts, sm_86 / sm_89, refuse both: Triton takes them.)
    limit = (inference_needs + needed) // 2
    fake = SimpleNamespace(window_attention_shared_memory=lambda w, d, bwd, dev: (needed if bwd else inference_needs,
                                                                                  limit),
                           window_attention_fwd=load_extension().window_attention_fwd)  # the inference runs
    monkeypatch.setattr(op, "load_extension", lambda: fake)
    op.cuda_shared_memory.cache_clear()
    try:
        qkv, table, _ = make_inputs(1, 24, 24, 2, 64, 12, False, torch.float16, torch.device("cuda"))
        with pytest.raises(vtkernels.BackendError, match=f"needs {needed} B of shared memory"):
            vtkernels.window_attention(qkv, table, 2, 12, 6, backend="cuda")
        with torch.no_grad():
            out = vtkernels.window_attention(qkv, table, 2, 12, 6, backend="cuda")
        assert out.shape == (1, 24, 24, 128) and torch.isfinite(out).all()
        monkeypatch.setattr(op.dispatcher, "gpu_preference", ("cuda", "triton"))
        assert op.dispatcher.choose(qkv.device, qkv=qkv, rel_pos_table=table, head_dim=64, window=12,
                                    pad_qkv=None) == "triton"  # the automatic choice falls back
    finally:
        op.cuda_shared_memory.cache_clear()


@pytest.mark.gpu
@pytest.mark.parametrize("window", [7, 12])  # on-chip fold; slab accumulated in memory (> 64 tokens)
@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_gpu_table_grad_is_deterministic(backend, window):
    qkv, table, pad = make_inputs(8, 57, 57, 3, 32, window, True, torch.bfloat16, torch.device("cuda"))
    cot = torch.randn(8, 57, 57, 96, device="cuda", dtype=torch.bfloat16)
    results = []
    for _ in range(2):
        out = vtkernels.window_attention(qkv, table, 3, window, window // 2, backend=backend, pad_qkv=pad)
        results.append(torch.autograd.grad(out, [qkv, table, pad], cot))
    for first, second in zip(*results):
        assert torch.equal(first, second)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_gpu_cuda_graph_capture(backend):
    """Captured after a warm-up call (as usual: the Triton forward has cached its bias tiles by
    then), replayed after in-place updates of both the input and the table (an optimizer step):
    the replay sees the new table."""
    qkv, table, _ = make_inputs(2, 28, 28, 6, 32, 7, False, torch.bfloat16, torch.device("cuda"))
    qkv, table = qkv.detach(), table.detach()
    expected = vtkernels.window_attention(qkv, table, 6, 7, 3, backend=backend)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = vtkernels.window_attention(qkv, table, 6, 7, 3, backend=backend)
    qkv.copy_(torch.randn_like(qkv))
    table.copy_(torch.randn_like(table))
    graph.replay()
    reference = vtkernels.window_attention(qkv.double(), table.double(), 6, 7, 3, backend="reference")
    assert_close(out, reference, torch.bfloat16)
    assert not torch.equal(out, expected)


# --- registration, compile, modules ------------------------------------------------------------

def test_opcheck_window_attention_ops(device):
    qkv, table, pad = make_inputs(1, 9, 11, 2, 16, 7, True, torch.float32, device)
    args = (2, 7, 7, 3, 0.25, -100.0, False, "triton")
    torch.library.opcheck(torch.ops.vtkernels.window_attention_fwd.default, (qkv, table, pad, *args))
    torch.library.opcheck(torch.ops.vtkernels.window_attention_fwd.default, (qkv, table, None, *args))
    dout = torch.randn(1, 9, 11, 32, device=device)
    torch.library.opcheck(torch.ops.vtkernels.window_attention_bwd.default,
                          (dout, qkv.detach(), table.detach(), pad.detach(), *args))


@pytest.mark.gpu
@pytest.mark.extension
def test_gpu_opcheck_cuda_backend():
    qkv, table, pad = make_inputs(1, 9, 11, 2, 16, 7, True, torch.float32, torch.device("cuda"))
    args = (2, 7, 7, 3, 0.25, -100.0, False, "cuda")
    torch.library.opcheck(torch.ops.vtkernels.window_attention_fwd.default, (qkv, table, pad, *args))
    dout = torch.randn(1, 9, 11, 32, device="cuda")
    torch.library.opcheck(torch.ops.vtkernels.window_attention_bwd.default,
                          (dout, qkv.detach(), table.detach(), pad.detach(), *args))


def test_torch_compile_fullgraph_has_no_graph_break(device):
    block = vtkernels.nn.WindowAttention(32, 2, window_size=7, shift_size=3, backend="triton").to(device)
    x = torch.randn(2, 9, 14, 32, device=device, requires_grad=True)
    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    out = compiled(x)
    out.sum().backward()
    assert torch.allclose(out, block(x), atol=1e-5)
    assert x.grad is not None and block.relative_position_bias_table.grad is not None


@pytest.mark.parametrize("height, width, shift", [(14, 14, 3), (9, 11, 3)])
def test_window_attention_module_from_hf_matches_hf(height, width, shift, device):
    dim, heads, window = 32, 2, 7
    layer = _hf_layer(dim, heads, window, (height, width), shift).float()
    hf_attn = layer.attention
    ours = vtkernels.nn.WindowAttention.from_hf(hf_attn, shift_size=shift, backend="triton").to(device)
    assert set(ours.state_dict()) == {"relative_position_bias_table", "qkv.weight", "qkv.bias", "proj.weight", "proj.bias"}
    x = torch.randn(2, height, width, dim)
    # HF's attention path of SwinLayer: pad, roll, partition, attention, reverse, roll back, crop.
    layer.layernorm_before = torch.nn.Identity()
    layer.mlp = _ZeroMlp()
    expected = layer(x.view(2, -1, dim), (height, width))[0] - x.view(2, -1, dim)
    out = ours(x.to(device)).cpu().view(2, -1, dim)
    assert_close(out, expected.double(), torch.float32, tol=1e-5)


@pytest.mark.parametrize("height, width, shift", [(14, 14, 3), (9, 11, 3), (7, 7, 3)])
def test_hf_swin_layer_is_drop_in(height, width, shift, device):
    dim, heads, window = 32, 2, 7
    theirs = _hf_layer(dim, heads, window, (height, width), shift).float()
    ours = vtkernels.nn.HFSwinLayer(theirs.attention.config, dim, (height, width), heads, shift_size=shift,
                                    backend="triton")
    ours.load_state_dict(theirs.state_dict())
    assert set(ours.state_dict()) == set(theirs.state_dict())
    x = torch.randn(2, height * width, dim)
    expected = theirs(x, (height, width))[0]
    got = ours.to(device)(x.to(device), (height, width))[0].cpu()
    assert_close(got, expected.double(), torch.float32, tol=1e-5)


class _ZeroMlp(torch.nn.Module):
    def forward(self, x):
        return torch.zeros_like(x)


def test_swin_block_state_dict_is_timms():
    block = vtkernels.nn.SwinTransformerBlock(32, (14, 14), num_heads=2, window_size=7, shift_size=3)
    keys = set(block.state_dict())
    assert keys == {"norm1.weight", "norm1.bias", "attn.relative_position_bias_table", "attn.qkv.weight",
                    "attn.qkv.bias", "attn.proj.weight", "attn.proj.bias", "norm2.weight", "norm2.bias",
                    "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias"}
    small = vtkernels.nn.SwinTransformerBlock(32, (7, 7), num_heads=2, window_size=7, shift_size=3)
    assert (small.window_size, small.shift_size) == (7, 0)


def test_window_attention_loads_old_timm_state_dicts_with_the_index():
    ours = vtkernels.nn.WindowAttention(32, 2, window_size=7)
    state = dict(ours.state_dict(), relative_position_index=ref.relative_position_index(7))
    ours.load_state_dict(state)
    with pytest.raises(ValueError, match="relative_position_index"):
        ours.load_state_dict(dict(state, relative_position_index=ref.relative_position_index(7).flip(0)))


def test_swin_block_matches_timm_when_available():
    timm = pytest.importorskip("timm")
    from timm.models.swin_transformer import SwinTransformerBlock as TimmBlock

    theirs = TimmBlock(32, (14, 14), num_heads=2, window_size=7, shift_size=3).eval()
    ours = vtkernels.nn.SwinTransformerBlock(32, (14, 14), num_heads=2, window_size=7, shift_size=3).eval()
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(2, 14, 14, 32)
    assert_close(ours(x), theirs(x).double(), torch.float32, tol=1e-5)
    assert timm is not None


def test_swin_block_matches_reference_composition(device):
    block = vtkernels.nn.SwinTransformerBlock(32, (9, 11), num_heads=2, window_size=7, shift_size=3,
                                              backend="triton").to(device)
    x = torch.randn(2, 9, 11, 32, device=device)
    a = block.attn
    qkv = a.qkv(block.norm1(x))
    attn = a.proj(ref.window_attention(qkv, a.relative_position_bias_table, 2, 7, 3, pad_qkv=a.qkv.bias))
    h = x + attn
    expected = h + block.mlp(block.norm2(h))
    assert_close(block(x), expected.double(), torch.float32, tol=1e-5)


# --- dispatch and bad input ------------------------------------------------------------------------

def test_cpu_tensors_default_to_reference():
    qkv, table, _ = make_inputs(1, 7, 7, 1, 16, 7, False, torch.float32, "cpu")
    assert vtkernels.ops.window_attention.dispatcher.choose(torch.device("cpu"), qkv=qkv, rel_pos_table=table,
                                                            head_dim=16, window=7) == "reference"


def test_forcing_cuda_explains_why():
    qkv, table, _ = make_inputs(1, 7, 7, 1, 16, 7, False, torch.float32, "cpu")
    with pytest.raises(vtkernels.BackendError, match="cuda"):
        vtkernels.window_attention(qkv, table, 1, 7, backend="cuda")


@pytest.mark.interpreter
def test_triton_refuses_bf16_in_the_interpreter():
    if HAS_CUDA:
        pytest.skip("interpreter only")
    qkv, table, _ = make_inputs(1, 7, 7, 1, 16, 7, False, torch.bfloat16, "cpu")
    with pytest.raises(vtkernels.BackendError, match="interpreter"):
        vtkernels.window_attention(qkv, table, 1, 7, backend="triton")


@pytest.mark.interpreter
@pytest.mark.parametrize("channels, heads, window, table_dtype, reason", [
    (2 * 160, 2, 7, torch.float32, "head_dim 160 > 128"),
    (32, 1, 17, torch.float32, "window of 17x17 tokens > 256"),
    (96, 2, 7, torch.float64, "rel_pos_table dtype torch.float64"),
])
def test_triton_refusals_say_why(channels, heads, window, table_dtype, reason):
    qkv = torch.randn(1, window, window, 3 * channels)
    table = torch.randn((2 * window - 1) ** 2, heads, dtype=table_dtype)
    with pytest.raises(vtkernels.BackendError, match=re.escape(reason)):
        vtkernels.window_attention(qkv, table, heads, window, backend="triton")


@pytest.mark.parametrize("kwargs, match", [
    (dict(table=torch.randn(168, 2)), "rel_pos_table"),
    (dict(heads=0), "num_heads must be a positive int"),
    (dict(shift=7), "shift_size"),
    (dict(heads=5), "num_heads"),
    (dict(qkv=torch.randn(1, 7, 7, 96).int()), "qkv"),
    (dict(qkv=torch.randn(7, 7, 96)), "qkv"),
    (dict(pad=torch.randn(95)), "pad_qkv"),
    (dict(scale=-1.0), "scale"),
])
def test_bad_input_names_the_argument(kwargs, match):
    qkv = kwargs.get("qkv", torch.randn(1, 7, 7, 96))
    table = kwargs.get("table", torch.randn(169, 2))
    with pytest.raises((ValueError, TypeError), match=match):
        vtkernels.window_attention(qkv, table, kwargs.get("heads", 2), 7, kwargs.get("shift", 0), kwargs.get("scale"),
                                   pad_qkv=kwargs.get("pad"))
