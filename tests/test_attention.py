"""Attention: the reference against torch, the kernels against the float64 reference (output and
dq, dk, dv), masks and empty rows, layouts and strides, custom-op registration, torch.compile,
the timm-compatible module, dispatch and bad input."""

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

import vtkernels
from vtkernels.ops import attention as attention_op
from vtkernels.reference.attention import allowed_keys
from vtkernels.reference.attention import attention as reference
from vtkernels.testing import assert_close, grads, upcast

HAS_CUDA = torch.cuda.is_available()
CPU_DTYPES = [torch.float32, torch.float16]
GPU_DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def make_qkv(batch, heads, n_q, n_kv, head_dim, dtype, device, layout="bhnd", requires_grad=True):
    def rand(n):
        shape = (batch, heads, n, head_dim) if layout == "bhnd" else (batch, n, heads, head_dim)
        return torch.randn(shape, device=device, dtype=torch.float32).to(dtype).requires_grad_(requires_grad)

    return rand(n_q), rand(n_kv), rand(n_kv)


def make_padding(batch, n_kv, device, whole_batch_padded=True):
    """Random padding (~30%) with every key of batch 0 padded when asked (its rows return zeros)."""
    mask = torch.rand(batch, n_kv, device=device) < 0.3
    mask[:, -1] = True  # the last key is padding everywhere: the tail block is masked
    if whole_batch_padded:
        mask[0] = True
    return mask


def same_dtype_peer(q, k, v, causal, mask, scale, layout):
    """Plain PyTorch explicit attention computed in the inputs' own dtype (torch's own error)."""
    qb, kb, vb = (t.transpose(1, 2) if layout == "bnhd" else t for t in (q, k, v))
    scores = (qb @ kb.transpose(-1, -2)) * scale
    allowed = allowed_keys(qb.shape[2], kb.shape[2], causal, mask, q.device)
    probs = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1).nan_to_num(0.0)
    out = probs.to(q.dtype) @ vb
    return out.transpose(1, 2) if layout == "bnhd" else out


def check_against_reference(batch, heads, n_q, n_kv, head_dim, causal, padded, layout, dtype, device, backend,
                            with_grad=True, scale=None):
    q, k, v = make_qkv(batch, heads, n_q, n_kv, head_dim, dtype, device, layout, requires_grad=with_grad)
    mask = make_padding(batch, n_kv, device) if padded else None
    given = scale
    scale = head_dim ** -0.5 if scale is None else scale
    out = vtkernels.attention(q, k, v, causal=causal, key_padding_mask=mask, backend=backend, layout=layout,
                              scale=given)
    assert out.shape == q.shape and out.is_contiguous()
    q64, k64, v64 = upcast(q, k, v)
    out64 = reference(q64, k64, v64, causal, mask, scale, layout)
    peer_inputs = [t.detach().requires_grad_(with_grad) for t in (q, k, v)]
    peer = same_dtype_peer(*peer_inputs, causal, mask, scale, layout)
    assert_close(out, out64, dtype, names=["out"], same_dtype_ref=peer)
    if not with_grad:
        return
    dout = torch.randn_like(out64)
    ours = grads(out, [q, k, v], dout)
    expected = grads(out64, [q64, k64, v64], dout)
    peer_grads = grads(peer, peer_inputs, dout)
    assert_close(ours, expected, dtype, names=["dq", "dk", "dv"], same_dtype_ref=peer_grads)


def check_packed(batch, tokens, heads, head_dim, causal, padded, dtype, device, backend):
    """attention_qkv on a packed (B, N, 3, H, d) projection output: against the float64 reference
    on its slices, and bit-identical to attention() on the unbound views (same kernels; only
    where the gradient lands differs)."""
    x = torch.randn(batch, tokens, 3 * heads * head_dim, device=device).to(dtype).requires_grad_()
    packed = (batch, tokens, 3, heads, head_dim)
    mask = make_padding(batch, tokens, device) if padded else None
    out = vtkernels.attention_qkv(x.view(packed), causal=causal, key_padding_mask=mask, backend=backend)
    assert out.shape == (batch, tokens, heads, head_dim) and out.is_contiguous()
    (x64,) = upcast(x)
    out64 = reference(*x64.view(packed).unbind(2), causal, mask, head_dim ** -0.5, "bnhd")
    assert_close(out, out64, dtype, names=["out"])
    dout = torch.randn_like(out64)
    (dx,) = grads(out, [x], dout)
    assert_close(dx, grads(out64, [x64], dout)[0], dtype, names=["dqkv"])
    unbound = vtkernels.attention(*x.view(packed).unbind(2), causal=causal, key_padding_mask=mask, backend=backend,
                                  layout="bnhd")
    assert torch.equal(out, unbound) and torch.equal(dx, grads(unbound, [x], dout)[0])


def autograd_node_names(out: torch.Tensor) -> set:
    seen, todo = set(), [out.grad_fn]
    while todo:
        node = todo.pop()
        if node is not None and node not in seen:
            seen.add(node)
            todo.extend(next_node for next_node, _ in node.next_functions)
    return {type(node).__name__ for node in seen}


# ----------------------------------------------------------------------------- reference

@pytest.mark.parametrize("causal", [False, True])
def test_reference_matches_sdpa(causal):
    q, k, v = make_qkv(2, 3, 13, 13, 16, torch.float64, "cpu", requires_grad=False)
    mask = torch.rand(2, 13) < 0.3
    mask[:, 0] = False  # keep one visible key per row so SDPA defines every row
    ours = reference(q, k, v, causal=causal, key_padding_mask=mask)
    attend = ~mask[:, None, None, :]
    if causal:
        attend = attend & torch.ones(13, 13, dtype=torch.bool).tril()
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=attend)
    assert_close(ours, expected, torch.float64)


def test_reference_causal_is_bottom_right_aligned():
    # 3 queries against 5 keys: query i sees keys j <= i + 2; the last query sees every key.
    allowed = allowed_keys(3, 5, True, None, torch.device("cpu"))[0, 0]
    expected = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(allowed, expected)
    q, k, v = make_qkv(1, 2, 3, 5, 8, torch.float64, "cpu", requires_grad=False)
    decode = reference(q[:, :, -1:], k, v, causal=True)
    assert_close(decode, reference(q, k, v, causal=True)[:, :, -1:], torch.float64)


def test_reference_rows_without_keys_are_zero_with_zero_grads():
    q, k, v = make_qkv(2, 2, 6, 4, 8, torch.float64, "cpu")
    mask = torch.zeros(2, 4, dtype=torch.bool)
    mask[1] = True  # batch 1 fully padded
    out = reference(q, k, v, causal=True, key_padding_mask=mask)  # 6 queries, 4 keys: rows 0, 1 see nothing
    assert torch.isfinite(out).all()
    assert out[1].abs().max() == 0 and out[0, :, :2].abs().max() == 0
    dq, dk, dv = grads(out, [q, k, v], torch.randn_like(out))
    assert all(torch.isfinite(g).all() for g in (dq, dk, dv))
    assert dq[1].abs().max() == 0 and dk[1].abs().max() == 0 and dv[1].abs().max() == 0


# ----------------------------------------------------------------------------- Triton (interpreter on the CPU)

CPU_CASES = [
    # batch, heads, n_q, n_kv, head_dim, causal, padded, layout
    (2, 2, 49, 49, 32, False, False, "bhnd"),
    (1, 3, 77, 77, 64, True, False, "bnhd"),
    (2, 2, 1, 49, 80, False, True, "bhnd"),  # decode: one query against a cache
    (2, 1, 20, 49, 96, True, True, "bnhd"),  # causal with Nq < Nkv
    (1, 2, 49, 20, 128, True, False, "bhnd"),  # causal with Nq > Nkv: the first rows see no key
    (3, 2, 33, 70, 64, False, True, "bnhd"),  # cross-attention with a fully padded batch
    (1, 2, 40, 73, 80, True, False, "bhnd"),  # causal offset 33: a key block starts 1 row before a query block
    (1, 2, 197, 197, 64, False, False, "bnhd"),  # ViT-B: 3 full key blocks, then a 16-wide tail of 5 keys
]


@pytest.mark.parametrize("dtype", CPU_DTYPES, ids=str)
@pytest.mark.parametrize("case", CPU_CASES, ids=lambda c: "x".join(map(str, c)))
def test_triton_matches_reference(case, dtype, device):
    check_against_reference(*case, dtype=dtype, device=device, backend="triton")


@pytest.mark.parametrize("scale", [0.3, 0.0, -0.2])
def test_triton_any_scale(scale, device):
    """A positive scale takes the kernels' fast path (max of the raw products, one FFMA per
    exponent), zero and negative ones the general one; padding and causal masks in both."""
    check_against_reference(2, 2, 37, 45, 32, False, True, "bhnd", torch.float32, device, "triton", scale=scale)
    check_against_reference(1, 2, 45, 45, 32, True, False, "bhnd", torch.float32, device, "triton", scale=scale)


def test_triton_non_contiguous_inputs(device):
    # q, k, v unbound from a fused qkv projection (sequence stride 3 * H * d), k with a
    # non-unit head_dim stride (copied by the op), v a transposed (B, H, N, d) view.
    batch, n, heads, head_dim = 2, 21, 2, 32
    qkv = torch.randn(batch, n, 3, heads, head_dim, device=device, requires_grad=True)
    q, k, _ = qkv.unbind(2)
    k = k.transpose(-1, -2).contiguous().transpose(-1, -2)
    v = torch.randn(batch, heads, n, head_dim, device=device).transpose(1, 2).requires_grad_()
    assert not q.is_contiguous() and k.stride(-1) != 1 and not v.is_contiguous()
    mask = make_padding(batch, n, device, whole_batch_padded=False)
    strided_mask = torch.stack([mask, ~mask], dim=-1)[..., 0]  # key stride 2
    assert strided_mask.stride(-1) == 2
    out = vtkernels.attention(q, k, v, key_padding_mask=strided_mask, backend="triton", layout="bnhd")
    qkv64, v64 = upcast(qkv, v)
    q64, k64, _ = qkv64.unbind(2)
    expected = reference(q64, k64, v64, key_padding_mask=mask, layout="bnhd")
    assert_close(out, expected, torch.float32)
    dout = torch.randn_like(out)
    (dqkv, dv), (dqkv64, dv64) = grads(out, [qkv, v], dout), grads(expected, [qkv64, v64], dout)
    assert_close([dqkv, dv], [dqkv64, dv64], torch.float32, names=["dqkv", "dv"])


@pytest.fixture
def tma_descriptors(monkeypatch):
    """Forces TMA in every kernel's launch_config (interpreted descriptors on the CPU) and records
    the box of every descriptor the forward and the backward build."""
    from vtkernels.triton import attention as triton_attention

    boxes, original_config, original_descriptor = [], triton_attention.launch_config, triton_attention.descriptor

    def config(head_dim, dtype, kernel, n=None):
        cfg = original_config(head_dim, dtype, kernel, n)
        return {**cfg, "TMA": dtype != torch.float32} if "TMA" in cfg else cfg

    def spy(t, *block):
        boxes.append(block)
        return original_descriptor(t, *block)
    monkeypatch.setattr(triton_attention, "launch_config", config)
    monkeypatch.setattr(triton_attention, "descriptor", spy)
    return boxes


@pytest.mark.interpreter
@pytest.mark.parametrize("case", [(2, 3, 77, 77, 64, False, True, "bhnd"), (2, 2, 49, 130, 32, True, False, "bnhd"),
                                  (1, 2, 1, 65, 64, True, False, "bhnd")], ids=["padded", "causal-cross", "decode"])
def test_triton_tma_matches_reference(case, tma_descriptors):
    """The TMA paths: the forward's query tiles and unmasked key / value blocks (the masked tail
    through pointers), the dK / dV kernel's query and dO blocks, the dQ kernel's key and value
    blocks, all through descriptors of the (B, H, N, d) views; 3 + 2 + 2 descriptors per launch."""
    check_against_reference(*case, dtype=torch.float16, device=torch.device("cpu"), backend="triton")
    assert len(tma_descriptors) >= 7
    assert all(box[:2] == (1, 1) and box[3] == case[4] for box in tma_descriptors)


@pytest.mark.interpreter
def test_triton_tma_reads_fused_qkv_in_place(tma_descriptors):
    """q, k, v unbound from a fused (B, N, 3, H, d) projection: 4-D descriptors over the strided
    views, no copy, forward (3) and backward (2 + 2). head_dim 80 (two column chunks) keeps pointers."""
    batch, n, heads, head_dim = 2, 40, 2, 32
    qkv = torch.randn(batch, n, 3, heads, head_dim).half().requires_grad_()
    out = vtkernels.attention(*qkv.unbind(2), backend="triton", layout="bnhd")
    qkv64 = upcast(qkv)[0]
    expected = reference(*qkv64.unbind(2), layout="bnhd")
    assert_close(out, expected, torch.float16)
    dout = torch.randn_like(out)
    assert_close(grads(out, [qkv], dout), grads(expected, [qkv64], dout), torch.float16, names=["dqkv"])
    assert len(tma_descriptors) == 7
    tma_descriptors.clear()
    check_against_reference(1, 2, 20, 20, 80, False, False, "bhnd", torch.float16, torch.device("cpu"), "triton")
    assert tma_descriptors == []


@pytest.fixture
def forced_key_splits(monkeypatch):
    """Every Triton forward launch splits its keys, down to one key block per split (the
    interpreter otherwise never splits); records each launch's split count and, per merge, the partials'
    rows beside the launch's (first row, rows)."""
    from vtkernels.triton import attention as triton_attention

    record = SimpleNamespace(splits=[], merges=[])
    split_rule, combine = triton_attention.key_splits, triton_attention._combine

    def split_all(programs, n_kv, block_n, slots):
        result = split_rule(programs, n_kv, block_n, slots=1 << 20)
        record.splits.append(result[0])
        return result

    def recording_combine(part, part_lse, out, lse, first_row, rows):
        record.merges.append((part.shape[3], part_lse.shape[3], first_row, rows))
        combine(part, part_lse, out, lse, first_row, rows)
    monkeypatch.setattr(triton_attention, "MIN_SPLIT_BLOCKS", 1)  # the tests' short key ranges split too
    monkeypatch.setattr(triton_attention, "key_splits", split_all)
    monkeypatch.setattr(triton_attention, "_combine", recording_combine)
    return record


@pytest.mark.interpreter
@pytest.mark.parametrize("case", [(1, 2, 1, 300, 64, True, True, "bhnd"), (2, 2, 49, 300, 32, False, True, "bnhd"),
                                  (1, 2, 260, 260, 80, True, False, "bhnd")],
                         ids=["decode", "cross-padded", "causal-empty-splits"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_triton_split_keys_match_reference(case, dtype, forced_key_splits):
    """Key ranges in separate programs, fp32 partials merged by attention_combine_kernel: a whole
    padded batch (every split empty: zeros), causal rows that see none of a later split, and the
    merged logsumexp driving the backward. 260 queries run as two launches (256 + 4 rows): the
    second one's partials hold its 4 rows, not all 260."""
    check_against_reference(*case, dtype=dtype, device=torch.device("cpu"), backend="triton")
    assert max(forced_key_splits.splits) > 1
    for part_rows, lse_rows, first_row, rows in forced_key_splits.merges:
        assert part_rows == lse_rows == rows
    if case[2] == 260:
        assert (4, 4, 256, 4) in forced_key_splits.merges


def test_key_splits_fill_the_gpu_only_when_a_launch_does_not():
    from vtkernels.triton.attention import key_splits

    assert key_splits(64, 1025, 64, slots=264) == (4, 320)  # iGPT-S decoding on 132 SMs: 17 key blocks
    assert key_splits(64, 850, 64, slots=264) == (3, 320)  # DETR cross-attention: 14 key blocks
    assert key_splits(36, 197, 64, slots=264) == (1, 256)  # ViT-B at batch 1: 4 key blocks, too few to split
    assert key_splits(300, 1025, 64, slots=264) == (1, 1088)  # the launch fills the GPU itself
    assert key_splits(8, 150, 64, slots=264) == (1, 192)  # 3 key blocks: too few to split
    assert key_splits(8, 0, 64, slots=264) == (1, 64)


def test_small_gpu_calls_run_each_kernel_as_one_launch():
    """Leftover rows get a launch of their own, except in calls small enough to be host-bound on a
    GPU (CLIP text, DETR), where a second launch costs more host time than the rows it saves."""
    from types import SimpleNamespace

    from vtkernels.triton.attention import one_launch, program_launches

    def gpu_query(*shape):
        return SimpleNamespace(shape=shape, device=torch.device("cuda"))

    assert [rows for _, rows, _ in program_launches(64, torch.bfloat16, "fwd", 77)] == [64, 13]
    assert [rows for _, rows, _ in program_launches(64, torch.bfloat16, "fwd", 77, single=True)] == [77]
    assert [rows for _, rows, _ in program_launches(64, torch.bfloat16, "dkdv", 197, single=True)] == [197]
    assert one_launch(gpu_query(512, 8, 77, 64), 77)  # CLIP text: 6 GFLOP
    assert one_launch(gpu_query(8, 8, 850, 32), 850)  # DETR encoder: 6 GFLOP
    assert not one_launch(gpu_query(256, 12, 197, 64), 197)  # ViT-B/16: 30 GFLOP
    assert not one_launch(SimpleNamespace(shape=(1, 1, 77, 64), device=torch.device("cpu")), 77)  # interpreter


def test_triton_batch_of_one_and_empty_batch(device):
    check_against_reference(1, 1, 17, 17, 32, False, False, "bhnd", torch.float32, device, "triton")
    q, k, v = make_qkv(0, 2, 5, 5, 32, torch.float32, device)
    out = vtkernels.attention(q, k, v, backend="triton")
    assert out.shape == (0, 2, 5, 32)
    dq, dk, dv = grads(out, [q, k, v], torch.randn_like(out))
    assert dq.shape == q.shape and dk.shape == k.shape and dv.shape == v.shape


def test_triton_zero_queries_gives_zero_key_grads(device):
    q, k, v = make_qkv(1, 2, 0, 5, 32, torch.float32, device)
    out = vtkernels.attention(q, k, v, backend="triton")
    out.sum().backward()
    assert out.shape == q.shape and k.grad.abs().max() == 0 and v.grad.abs().max() == 0


@pytest.mark.parametrize("case", [(2, 49, 3, 32, False, True), (1, 77, 2, 64, True, False), (2, 20, 2, 80, True, True)],
                         ids=lambda c: "x".join(map(str, c)))
def test_triton_packed_qkv(case, device):
    check_packed(*case, torch.float32, device, "triton")


def test_packed_qkv_gradient_is_one_buffer(device):
    """The module's backward writes d qkv in one piece: no unbind node (whose backward stacks)."""
    module = vtkernels.nn.Attention(64, num_heads=2, backend="triton").to(device)
    out = module(torch.randn(2, 9, 64, device=device, requires_grad=True))
    names = autograd_node_names(out)
    assert not any("Unbind" in name or "Stack" in name for name in names), names
    reference_names = autograd_node_names(vtkernels.nn.Attention(64, num_heads=2, backend="reference")(
        torch.randn(2, 9, 64, requires_grad=True)))
    assert any("Unbind" in name for name in reference_names)  # the walk does see an unbind


def test_packed_qkv_bad_input(device):
    with pytest.raises(ValueError, match=r"qkv must have shape \(B, N, 3, H, head_dim\)"):
        vtkernels.attention_qkv(torch.randn(2, 5, 2, 2, 32, device=device), backend="triton")
    with pytest.raises(ValueError, match="qkv"):
        vtkernels.attention_qkv(torch.randn(2, 5, 3 * 64, device=device), backend="triton")


def test_custom_ops_opcheck(device):
    q, k, v = make_qkv(2, 2, 9, 12, 32, torch.float32, device, layout="bnhd")
    mask = make_padding(2, 12, device)
    torch.library.opcheck(attention_op.attention_fwd, (q, k, v, mask, True, 0.25, "bnhd", "triton"))
    out, lse = attention_op.attention_fwd(q, k, v, mask, True, 0.25, "bnhd", "triton")
    dout = torch.randn_like(out)
    args = (dout, q.detach(), k.detach(), v.detach(), out.detach(), lse.detach(), mask, True, 0.25, "bnhd", "triton")
    torch.library.opcheck(attention_op.attention_bwd, args)
    qkv = torch.randn(2, 9, 3, 2, 32, device=device)
    torch.library.opcheck(attention_op.attention_qkv_fwd, (qkv, mask[:, :9], True, 0.25, "triton"))
    out, lse = attention_op.attention_qkv_fwd(qkv, mask[:, :9], True, 0.25, "triton")
    torch.library.opcheck(attention_op.attention_qkv_bwd,
                          (torch.randn_like(out), qkv, out, lse, mask[:, :9], True, 0.25, "triton"))


def test_torch_compile_fullgraph(device):
    # inductor (on the CPU too) around the module: fused qkv, the bnhd views, the custom op, proj
    module = vtkernels.nn.Attention(64, num_heads=2, causal=True, backend="triton").to(device)
    x = torch.randn(2, 10, 64, device=device, requires_grad=True)
    mask = make_padding(2, 10, device, whole_batch_padded=False)
    compiled = torch.compile(module, fullgraph=True)
    out = compiled(x, key_padding_mask=mask)
    dout = torch.randn_like(out)
    ours = grads(out, [x, module.qkv.weight], dout)
    expected_out = module(x, key_padding_mask=mask)
    expected = grads(expected_out, [x, module.qkv.weight], dout)
    assert_close([out, *ours], [expected_out, *expected], torch.float32, names=["out", "dx", "dqkv.weight"])


# ----------------------------------------------------------------------------- module

def timm_style_attention(module, x):
    """timm's Attention.forward written out (reshape, permute, explicit softmax)."""
    batch, n, dim = x.shape
    qkv = module.qkv(x).reshape(batch, n, 3, module.num_heads, module.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    attn = ((q * module.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
    return module.proj((attn @ v).transpose(1, 2).reshape(batch, n, dim))


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_module_matches_timm_forward(backend, device):
    module = vtkernels.nn.Attention(64, num_heads=2, qkv_bias=True, backend=backend).to(device)
    assert set(module.state_dict()) == {"qkv.weight", "qkv.bias", "proj.weight", "proj.bias"}
    assert (module.num_heads, module.head_dim, module.scale) == (2, 32, 32 ** -0.5)
    x = torch.randn(2, 13, 64, device=device, requires_grad=True)
    out = module(x)
    expected = timm_style_attention(module, x)
    assert_close(out, expected, torch.float32, tol=3e-6)
    dout = torch.randn_like(out)
    params = [x, module.qkv.weight, module.qkv.bias, module.proj.weight]
    assert_close(grads(out, params, dout), grads(expected, params, dout), torch.float32, tol=1e-5,
                 names=["dx", "dqkv.weight", "dqkv.bias", "dproj.weight"])


def test_module_loads_timm_state_dict(device):
    timm = pytest.importorskip("timm")
    theirs = timm.models.vision_transformer.Attention(64, num_heads=2, qkv_bias=True).to(device).eval()
    ours = vtkernels.nn.Attention(64, num_heads=2, qkv_bias=True, backend="triton").to(device)  # head_dim 32
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(2, 11, 64, device=device)
    assert_close(ours(x), theirs(x), torch.float32, tol=3e-6)


def test_module_causal_and_padding(device):
    module = vtkernels.nn.Attention(64, num_heads=2, causal=True, backend="triton").to(device)
    x = torch.randn(3, 9, 64, device=device)
    mask = make_padding(3, 9, device)
    out = module(x, key_padding_mask=mask)
    module.backend = "reference"
    assert_close(out, module(x, key_padding_mask=mask), torch.float32)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("causal", [False, True])
def test_module_forward_row_is_the_full_forward_at_that_row(causal, device):
    """One query row per sample (a model's last block before CLS / EOT pooling), with padding."""
    module = vtkernels.nn.Attention(64, num_heads=2, qkv_bias=True, causal=causal, backend="triton").to(device)
    x = torch.randn(3, 9, 64, device=device)
    mask = make_padding(3, 9, device)
    full = module(x, key_padding_mask=mask)
    rows = torch.tensor([8, 0, 4], device=device)
    assert_close(module.forward_row(x, rows, mask), full[torch.arange(3, device=device), rows], torch.float32,
                 names=["rows"])
    assert_close(module.forward_row(x, 2, mask), full[:, 2], torch.float32, names=["row 2"])


# ----------------------------------------------------------------------------- dispatch and bad input

@pytest.mark.interpreter
def test_bad_inputs_raise_clear_errors():
    q, k, v = make_qkv(2, 2, 5, 7, 32, torch.float32, "cpu", requires_grad=False)
    with pytest.raises(ValueError, match="layout"):
        vtkernels.attention(q, k, v, layout="nbhd")
    with pytest.raises(TypeError, match="k has dtype"):
        vtkernels.attention(q, k.half(), v)
    with pytest.raises(ValueError, match="q must have 4 dimensions"):
        vtkernels.attention(q[0], k, v)
    with pytest.raises(ValueError, match="k must match q"):
        vtkernels.attention(q, k[:, :1], v[:, :1])
    with pytest.raises(ValueError, match="v must have shape"):
        vtkernels.attention(q, k, v[:, :, :3])
    with pytest.raises(ValueError, match="at least one key"):
        vtkernels.attention(q, k[:, :, :0], v[:, :, :0])
    with pytest.raises(TypeError, match="key_padding_mask has dtype"):
        vtkernels.attention(q, k, v, key_padding_mask=torch.zeros(2, 7))
    with pytest.raises(ValueError, match="key_padding_mask must have shape"):
        vtkernels.attention(q, k, v, key_padding_mask=torch.zeros(2, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="scale"):
        vtkernels.attention(q, k, v, scale=float("nan"))
    with pytest.raises(TypeError, match="causal must be a bool"):
        vtkernels.attention(q, k, v, causal=1)
    with pytest.raises(ValueError, match="q must have a non-empty head_dim"):
        vtkernels.attention(q[..., :0], k[..., :0], v[..., :0])
    with pytest.raises(vtkernels.BackendError, match="head_dim 48"):
        q48, k48, v48 = make_qkv(1, 1, 4, 4, 48, torch.float32, "cpu", requires_grad=False)
        vtkernels.attention(q48, k48, v48, backend="triton")
    with pytest.raises(vtkernels.BackendError, match="batch \\* heads"):
        big = torch.zeros(1, 1, 1, 32).expand(65536, 1, 1, 32)  # 65536 (batch, head) pairs, one query each
        vtkernels.attention(big, big, big, backend="triton")
    with pytest.raises(vtkernels.BackendError, match="CUDA tensor"):
        vtkernels.attention(q, k, v, backend="cuda")
    with pytest.raises(ValueError, match="divisible"):
        vtkernels.nn.Attention(65, num_heads=2)


def test_grid_limits_per_backend():
    """Triton puts batch * heads on one grid dimension, the extension batch and heads on two."""
    many_heads = torch.empty(512, 256, 1, 64, device="meta")  # batch * heads = 131072
    assert attention_op._kernel_refusals("triton", many_heads, "bhnd")
    assert not attention_op._kernel_refusals("cuda", many_heads, "bhnd")
    assert attention_op._kernel_refusals("cuda", torch.empty(70000, 1, 1, 64, device="meta"), "bhnd")


def test_reference_takes_any_head_dim():
    q, k, v = make_qkv(1, 1, 4, 4, 48, torch.float32, "cpu", requires_grad=False)
    assert vtkernels.attention(q, k, v).shape == q.shape


# ----------------------------------------------------------------------------- GPU (real shapes)

GPU_CASES = [
    (4, 3, 197, 197, 64, False, False, "bnhd"),  # ViT-B/16
    (2, 2, 257, 257, 80, False, False, "bhnd"),  # ViT-H/14
    (1, 2, 577, 577, 64, False, False, "bnhd"),  # CLIP-L/14@336
    (4, 2, 77, 77, 64, True, True, "bnhd"),  # CLIP text
    (2, 2, 850, 850, 32, False, True, "bhnd"),  # DETR encoder, padded
    (2, 2, 100, 850, 32, False, True, "bhnd"),  # DETR cross-attention
    (2, 2, 1024, 1024, 96, True, False, "bnhd"),  # iGPT
    (2, 2, 300, 1024, 128, True, False, "bhnd"),  # causal Nq < Nkv
    (2, 2, 1, 577, 128, True, True, "bnhd"),  # decode
]


# The ids avoid the word "cuda": `-m gpu -k cuda` (e.g. pytest under compute-sanitizer, by hand)
# should get the small CUDA-backend tests below, not these model-sized shapes; `-k extension` gets these.
@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "cuda"], ids=["triton", "extension"])
@pytest.mark.parametrize("dtype", GPU_DTYPES, ids=str)
@pytest.mark.parametrize("case", GPU_CASES, ids=lambda c: "x".join(map(str, c)))
def test_gpu_model_shapes(case, dtype, backend):
    check_against_reference(*case, dtype=dtype, device=torch.device("cuda"), backend=backend)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES, ids=str)
@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_gpu_small_and_odd_views(backend, dtype):
    # the CPU cases (odd lengths, decode, Nq > Nkv causal, fully padded batch) on the GPU,
    # plus a view with an odd storage offset (the CUDA bindings copy fp16 / bf16 ones to align them)
    cuda = torch.device("cuda")
    for case in CPU_CASES:
        check_against_reference(*case, dtype=dtype, device=cuda, backend=backend)
    base = torch.randn(2 * 2 * 9 * 64 + 1, device=cuda).to(dtype).requires_grad_()
    q = base[1:].view(2, 2, 9, 64)
    out = vtkernels.attention(q, q, q, causal=True, backend=backend)
    base64 = upcast(base)[0]
    expected = reference(*[base64[1:].view(2, 2, 9, 64)] * 3, causal=True)
    assert_close(out, expected, dtype)
    dout = torch.randn_like(expected)
    assert_close(grads(out, [base], dout), grads(expected, [base64], dout), dtype, names=["dbase"])


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_gpu_pointer_path(dtype, monkeypatch):
    """The Triton kernels with TMA turned off (the path unaligned views take) at power-of-two
    head_dims, where TMA is otherwise the default on sm_90."""
    from vtkernels.triton import attention as triton_attention

    original = triton_attention.launch_config

    def without_tma(head_dim, dtype, kernel, n=None):
        cfg = original(head_dim, dtype, kernel, n)
        return {**cfg, "TMA": False} if "TMA" in cfg else cfg
    monkeypatch.setattr(triton_attention, "launch_config", without_tma)
    for case in [(4, 12, 197, 197, 64, False, True, "bnhd"), (2, 8, 77, 77, 64, True, False, "bhnd"),
                 (2, 4, 100, 850, 32, False, True, "bhnd"), (1, 8, 1, 1025, 128, True, False, "bhnd")]:
        check_against_reference(*case, dtype=dtype, device=torch.device("cuda"), backend="triton")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES, ids=str)
@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_gpu_packed_qkv(backend, dtype):
    cuda = torch.device("cuda")
    for case in [(4, 197, 12, 64, False, False), (2, 77, 8, 64, True, True), (2, 50, 4, 80, False, True)]:
        check_packed(*case, dtype, cuda, backend)


@pytest.mark.gpu
@pytest.mark.extension
def test_gpu_opcheck_cuda():
    q, k, v = make_qkv(2, 2, 9, 12, 64, torch.float16, torch.device("cuda"), layout="bnhd")
    mask = make_padding(2, 12, torch.device("cuda"))
    torch.library.opcheck(attention_op.attention_fwd, (q, k, v, mask, True, 0.125, "bnhd", "cuda"))
