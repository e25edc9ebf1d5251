"""Patch embedding: reference vs Conv2d / timm / HF, kernels vs the float64 reference (forward and
every gradient) for every variant, custom-op registration, torch.compile, module, resampling, bad input."""

import pytest
import torch
import torch.nn.functional as F

import vtkernels
from vtkernels.backend import BackendError
from vtkernels.ops.patch_embed import dispatcher
from vtkernels.reference import patch_embed as ref
from vtkernels.testing import assert_close, grads, rel_error, upcast

HAS_CUDA = torch.cuda.is_available()
CPU_DTYPES = [torch.float32, torch.float16]
GPU_DTYPES = [torch.float32, torch.float16, torch.bfloat16]
KERNEL_BACKENDS = ["triton", "cuda"]
NAMES = ["images", "weight", "bias", "cls_token", "pos_embed"]

# name: (patch, dim, layout, bias, cls, pos rows ("N+1", "N" or None), normalize)
# layout: "nchw" / "nhwc" float, "u8" uint8 (B, H, W, C).
VARIANTS = {
    "vit": (16, 32, "nchw", True, True, "N+1", False),
    "vit_nhwc": (16, 32, "nhwc", True, True, "N+1", False),
    "swin": (4, 64, "nchw", True, False, None, False),
    "swin_pos": (4, 32, "nhwc", True, False, "N", False),
    "clip_no_bias": (16, 64, "nchw", False, True, "N+1", False),
    "no_embed_class": (16, 32, "nchw", True, True, "N", False),
    "cls_only": (16, 32, "nhwc", True, True, None, False),
    "uint8": (16, 32, "u8", True, True, "N+1", True),
    "uint8_swin": (4, 32, "u8", True, False, None, True),
    "uint8_unnormalized": (16, 32, "u8", True, True, "N+1", False),  # pixels / 255 only
    "float_normalized": (16, 32, "nchw", True, True, "N+1", True),
    "patch14_ragged": (14, 32, "nchw", True, True, "N+1", False),
    "patch32": (32, 32, "nhwc", False, True, "N+1", False),
}


def image_size(patch):
    # Non-square; patch 14 leaves pixels past the last full patch (Conv2d ignores them).
    return {4: (12, 20), 14: (31, 45), 32: (64, 32)}.get(patch, (32, 48))


def make_inputs(variant, dtype, device, batch=2, requires_grad=True, size=None):
    patch, dim, layout, has_bias, has_cls, pos_rows, normalize = VARIANTS[variant]
    height, width = size or image_size(patch)
    num_patches = (height // patch) * (width // patch)

    def rand(*shape, scale=1.0):
        t = (torch.randn(*shape, device=device) * scale).to(dtype)
        return t.requires_grad_(requires_grad)

    if layout == "u8":
        images = torch.randint(0, 256, (batch, height, width, 3), device=device, dtype=torch.uint8)
    else:
        images = rand(*((batch, 3, height, width) if layout == "nchw" else (batch, height, width, 3)))
    rows = {"N+1": num_patches + 1, "N": num_patches, None: 0}[pos_rows]
    return dict(
        images=images, weight=rand(dim, 3, patch, patch, scale=(3 * patch * patch) ** -0.5),
        bias=rand(dim) if has_bias else None, patch_size=patch, cls_token=rand(1, 1, dim) if has_cls else None,
        pos_embed=rand(1, rows, dim) if rows else None,
        mean=torch.tensor([0.485, 0.456, 0.406], device=device) if normalize else None,
        std=torch.tensor([0.229, 0.224, 0.225], device=device) if normalize else None,
        channels_last=layout == "nhwc")


def tensors(inputs):
    return [inputs[name] for name in NAMES]


def with_tensors(inputs, new):
    return {**inputs, **dict(zip(NAMES, new))}


def upcast_inputs(inputs):
    images = inputs["images"]
    up = upcast(*tensors(inputs))
    if images.dtype == torch.uint8:
        up[0] = images  # pixels stay uint8: the normalization is part of the op
    return with_tensors(inputs, up)


def fresh_leaves(inputs):
    return with_tensors(inputs, [t if t is None or not t.requires_grad else t.detach().requires_grad_()
                                 for t in tensors(inputs)])


# fp32 on the GPU follows cuDNN's TF32 switch (on by default) like the Conv2d path: both operands
# rounded to 11 significant bits is ~4e-4 relative error per dot product, above testing.TF32_REL_TOL.
TF32_TOL = 1e-3


def float_tol(dtype, device):
    return TF32_TOL if dtype == torch.float32 and device.type == "cuda" and torch.backends.cudnn.allow_tf32 else None


def check_against_reference(variant, dtype, device, backend, **kwargs):
    inputs = make_inputs(variant, dtype, device, **kwargs)
    check_inputs_against_reference(inputs, dtype, device, backend)


def check_inputs_against_reference(inputs, dtype, device, backend):
    device = torch.device(device)
    reasons = dispatcher.refusals(backend, device, weight=inputs["weight"], images=inputs["images"],
                                  channels_last=inputs["channels_last"], num_patches=1)
    if reasons:
        pytest.skip(f"{backend} refuses: {'; '.join(reasons)}")
    out = vtkernels.patch_embed(**inputs, backend=backend)
    cot = torch.randn(out.shape, device=device)
    wanted = [t if t is not None and t.requires_grad else None for t in tensors(inputs)]
    ours = grads(out, wanted, cot)

    inputs64 = upcast_inputs(inputs)
    out64 = vtkernels.patch_embed(**inputs64, backend="reference")
    ref_grads = grads(out64, [t if t is not None and t.requires_grad else None for t in tensors(inputs64)], cot)

    peer_inputs = fresh_leaves(inputs)
    peer = vtkernels.patch_embed(**peer_inputs, backend="reference")
    peer_grads = grads(peer, [t if t is not None and t.requires_grad else None for t in tensors(peer_inputs)], cot)

    kept = [i for i, t in enumerate(wanted) if t is not None]
    assert out.dtype == inputs["weight"].dtype and out.shape == out64.shape
    assert_close([out] + [ours[i] for i in kept], [out64] + [ref_grads[i] for i in kept], dtype,
                 names=["tokens"] + ["d " + NAMES[i] for i in kept], tol=float_tol(dtype, device),
                 same_dtype_ref=[peer] + [peer_grads[i] for i in kept])


# --- the reference is the timm / HF path --------------------------------------------------------

def test_reference_matches_conv_flatten_cat_add():
    x = torch.randn(2, 3, 32, 48, dtype=torch.float64)
    w, b = torch.randn(8, 3, 16, 16, dtype=torch.float64), torch.randn(8, dtype=torch.float64)
    cls, pos = torch.randn(1, 1, 8, dtype=torch.float64), torch.randn(1, 7, 8, dtype=torch.float64)
    conv = torch.nn.Conv2d(3, 8, 16, 16).double()
    conv.weight.data.copy_(w)
    conv.bias.data.copy_(b)
    tokens = conv(x).flatten(2).transpose(1, 2)
    expected = torch.cat([cls.expand(2, -1, -1), tokens], 1) + pos
    torch.testing.assert_close(ref.patch_embed(x, w, b, 16, cls, pos), expected)
    torch.testing.assert_close(ref.patch_embed(x.permute(0, 2, 3, 1), w, b, 16, channels_last=True), tokens)
    # no_embed_class (timm): pos has N rows and the cls token gets none.
    pos_n = pos[:, 1:]
    torch.testing.assert_close(ref.patch_embed(x, w, b, 16, cls, pos_n),
                               torch.cat([cls.expand(2, -1, -1), tokens + pos_n], 1))


def test_reference_uint8_matches_totensor_normalize():
    u8 = torch.randint(0, 256, (2, 32, 32, 3), dtype=torch.uint8)
    mean, std = torch.tensor([0.5, 0.4, 0.3]), torch.tensor([0.2, 0.25, 0.3])
    w = torch.randn(8, 3, 16, 16)
    normalized = (u8.permute(0, 3, 1, 2).float() / 255 - mean[:, None, None]) / std[:, None, None]
    expected = F.conv2d(normalized, w, stride=16).flatten(2).transpose(1, 2)
    torch.testing.assert_close(ref.patch_embed(u8, w, None, 16, mean=mean, std=std), expected)


def test_reference_matches_hf_vit_embeddings():
    transformers = pytest.importorskip("transformers")
    config = transformers.ViTConfig(image_size=32, patch_size=16, hidden_size=24, num_channels=3)
    emb = transformers.models.vit.modeling_vit.ViTEmbeddings(config).eval()
    with torch.no_grad():
        emb.cls_token.normal_()
        emb.position_embeddings.normal_()
    x = torch.randn(2, 3, 32, 32)
    proj = emb.patch_embeddings.projection
    ours = ref.patch_embed(x, proj.weight, proj.bias, 16, emb.cls_token, emb.position_embeddings)
    torch.testing.assert_close(ours, emb(x), rtol=1e-5, atol=1e-5)


def test_reference_matches_timm_patch_embed():
    timm_layers = pytest.importorskip("timm.layers")
    timm_pe = timm_layers.PatchEmbed(img_size=(32, 48), patch_size=16, in_chans=3, embed_dim=24)
    ours = vtkernels.nn.PatchEmbed(img_size=(32, 48), patch_size=16, in_chans=3, embed_dim=24, backend="reference")
    ours.load_state_dict(timm_pe.state_dict())
    x = torch.randn(2, 3, 32, 48)
    torch.testing.assert_close(ours(x), timm_pe(x))


# --- kernels vs the reference: every variant, forward and every gradient -------------------------

@pytest.mark.parametrize("dtype", CPU_DTYPES)
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_triton_matches_reference(variant, dtype, device):
    check_against_reference(variant, dtype, device, "triton")


@pytest.mark.parametrize("variant", ["vit", "swin_pos", "uint8", "patch14_ragged"])
def test_triton_weight_tiles_through_tma(variant, monkeypatch):
    """The forward's weight tiles through a tensor descriptor (emulated on the CPU), as on sm_90 in
    16 bits: columns past K (patch 14: 588, stored padded to 592) and rows past D zero-filled."""
    from vtkernels.triton import patch_embed as triton_patch_embed

    config, describe, boxes = triton_patch_embed.launch_config, triton_patch_embed.descriptor, []

    def tma_config(kind, *args):
        return {**config(kind, *args), **({"TMA": True} if kind == "fwd" else {})}

    def recording_descriptor(t, *box):
        boxes.append((tuple(t.shape), box))
        return describe(t, *box)
    monkeypatch.setattr(triton_patch_embed, "launch_config", tma_config)
    monkeypatch.setattr(triton_patch_embed, "descriptor", recording_descriptor)
    check_against_reference(variant, torch.float16, torch.device("cpu"), "triton")
    patch, dim = VARIANTS[variant][:2]
    assert boxes == [((dim, 3 * patch * patch), (32, 16))]


def test_triton_non_contiguous_inputs(device):
    inputs = make_inputs("vit", torch.float32, device, requires_grad=False)
    wide = torch.randn(2, 3, 32, 50, device=device)
    images = wide[..., 1:49]  # width stride 1 but rows of 50: no vectorized gather
    weight = inputs["weight"].permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)  # channels_last weight
    pos = torch.randn(1, 32, 7, device=device).transpose(1, 2)  # (1, 7, 32) with column stride 7
    new = [t.detach().requires_grad_() for t in (images, weight, inputs["bias"], inputs["cls_token"], pos)]
    check_inputs_against_reference(with_tensors(inputs, new), torch.float32, device, "triton")


def test_triton_nchw_tensor_in_channels_last_memory(device):
    inputs = make_inputs("vit", torch.float32, device)
    images = inputs["images"].detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    check_inputs_against_reference({**inputs, "images": images}, torch.float32, device, "triton")


def test_triton_batch_of_one(device):
    check_against_reference("vit", torch.float32, device, "triton", batch=1)


def test_triton_empty_batch(device):
    inputs = make_inputs("vit", torch.float32, device, batch=0)
    out = vtkernels.patch_embed(**inputs, backend="triton")
    assert out.shape == (0, 7, 32)
    out.sum().backward()
    assert inputs["images"].grad.shape == inputs["images"].shape
    for name in ("weight", "bias", "cls_token", "pos_embed"):
        assert torch.all(inputs[name].grad == 0), name


def test_ragged_images_get_zero_grad_past_last_patch(device):
    inputs = make_inputs("patch14_ragged", torch.float32, device)
    vtkernels.patch_embed(**inputs, backend="triton").square().sum().backward()
    grad = inputs["images"].grad
    assert torch.all(grad[:, :, 28:] == 0) and torch.all(grad[:, :, :, 42:] == 0)
    assert grad[:, :, :28, :42].abs().sum() > 0


def test_triton_weight_grad_without_image_grad(device):
    inputs = make_inputs("vit", torch.float32, device)
    inputs["images"] = inputs["images"].detach()
    check_inputs_against_reference(inputs, torch.float32, device, "triton")


# --- GPU: both kernel backends, bf16, model sizes ------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_gpu_kernels_match_reference(backend, dtype, variant):
    check_against_reference(variant, dtype, torch.device("cuda"), backend)


@pytest.mark.gpu
@pytest.mark.parametrize("variant", ["vit", "patch14_ragged"])
def test_gpu_triton_pointer_weight_path(variant, monkeypatch):
    """16-bit weights through pointers (VTKERNELS_TMA=0), the path pre-Hopper GPUs take."""
    monkeypatch.setenv("VTKERNELS_TMA", "0")
    check_against_reference(variant, torch.bfloat16, torch.device("cuda"), "triton")


GPU_MODEL_SHAPES = {  # name: (variant, image size, dim)
    "vit_b16": ("vit", (224, 224), 768),
    "vit_l14_336": ("patch14_ragged", (336, 336), 1024),
    "swin_t": ("uint8_swin", (224, 224), 96),
    "clip_b16_u8": ("uint8", (224, 224), 768),
}


@pytest.mark.gpu
@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("model", sorted(GPU_MODEL_SHAPES))
def test_gpu_model_shapes(backend, dtype, model):
    variant, size, dim = GPU_MODEL_SHAPES[model]
    patch = VARIANTS[variant][0]
    inputs = make_inputs(variant, dtype, torch.device("cuda"), batch=8, size=size)
    rand = lambda *s: (torch.randn(*s, device="cuda") * 0.02).to(dtype).requires_grad_()  # noqa: E731
    inputs["weight"] = rand(dim, 3, patch, patch)
    inputs["bias"] = rand(dim) if inputs["bias"] is not None else None
    inputs["cls_token"] = rand(1, 1, dim) if inputs["cls_token"] is not None else None
    if inputs["pos_embed"] is not None:
        num_patches = (size[0] // patch) * (size[1] // patch)
        inputs["pos_embed"] = rand(1, num_patches + 1, dim)
    check_inputs_against_reference(inputs, dtype, torch.device("cuda"), backend)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_gpu_fp32_without_tf32_is_exact(backend, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    check_against_reference("vit", torch.float32, torch.device("cuda"), backend)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_gpu_weight_grad_is_deterministic(backend):
    inputs = make_inputs("vit", torch.bfloat16, torch.device("cuda"), batch=16, size=(224, 224))
    out = vtkernels.patch_embed(**inputs, backend=backend)
    dy = torch.randn_like(out)
    first = torch.autograd.grad(out, inputs["weight"], dy, retain_graph=True)[0]
    assert torch.equal(first, torch.autograd.grad(out, inputs["weight"], dy)[0])


# --- registration, compile ------------------------------------------------------------------------

def test_opcheck_patch_embed_ops(device):
    inputs = make_inputs("vit_nhwc", torch.float32, device)
    images = ref.images_as_nchw(inputs["images"], True)
    scale, shift = torch.rand(3, device=device) + 0.5, torch.randn(3, device=device)
    args = (images, inputs["weight"], inputs["bias"], inputs["cls_token"].reshape(-1), inputs["pos_embed"][0],
            scale, shift, "triton")
    torch.library.opcheck(torch.ops.vtkernels.patch_embed_fwd.default, args)
    torch.library.opcheck(torch.ops.vtkernels.patch_embed_fwd.default,
                          (images, inputs["weight"], None, None, None, None, None, "triton"))
    out = torch.ops.vtkernels.patch_embed_fwd(*[a.detach() if isinstance(a, torch.Tensor) else a for a in args])
    torch.library.opcheck(torch.ops.vtkernels.patch_embed_bwd.default,
                          (torch.randn_like(out), images.detach(), inputs["weight"].detach(), scale, shift,
                           True, True, True, True, 7, "triton"))


def test_torch_compile_fullgraph_has_no_graph_break(device):
    module = vtkernels.nn.PatchEmbed(img_size=(32, 48), patch_size=16, embed_dim=32, backend="triton").to(device)
    cls = torch.randn(1, 1, 32, device=device, requires_grad=True)
    pos = torch.randn(1, 7, 32, device=device, requires_grad=True)
    x = torch.randn(2, 3, 32, 48, device=device)
    compiled = torch.compile(lambda images: module.forward_tokens(images, cls, pos), fullgraph=True, backend="aot_eager")
    out = compiled(x)
    expected = ref.patch_embed(x, module.proj.weight, module.proj.bias, 16, cls, pos)
    assert_close(out, expected.detach().double(), torch.float32)
    out.sum().backward()
    assert cls.grad is not None and module.proj.weight.grad is not None


# --- module and resampling ------------------------------------------------------------------------

def test_module_state_dict_and_outputs_match_timm_layout(device):
    module = vtkernels.nn.PatchEmbed(img_size=(32, 48), patch_size=16, in_chans=3, embed_dim=32, backend="triton")
    module = module.to(device)
    assert set(module.state_dict()) == {"proj.weight", "proj.bias"}
    assert module.proj.weight.shape == (32, 3, 16, 16) and module.num_patches == 6 and module.grid_size == (2, 3)
    x = torch.randn(2, 3, 32, 48, device=device)
    conv = module.proj(x)  # the timm computation with the same parameters
    assert_close(module(x), conv.flatten(2).transpose(1, 2).double(), torch.float32)
    nhwc = vtkernels.nn.PatchEmbed(img_size=(32, 48), embed_dim=32, output_fmt="NHWC", backend="triton").to(device)
    nhwc.load_state_dict(module.state_dict())
    assert_close(nhwc(x), conv.permute(0, 2, 3, 1).double(), torch.float32)
    nchw = vtkernels.nn.PatchEmbed(img_size=(32, 48), embed_dim=32, flatten=False, backend="triton").to(device)
    nchw.load_state_dict(module.state_dict())
    assert_close(nchw(x), conv.double(), torch.float32)
    no_bias = vtkernels.nn.PatchEmbed(img_size=(32, 48), embed_dim=32, bias=False, backend="triton")
    assert set(no_bias.state_dict()) == {"proj.weight"}


@pytest.mark.parametrize("output_fmt", [None, "NCHW", "NHWC", "NCL", "NLC"])
@pytest.mark.parametrize("dynamic_img_pad", [False, True])
def test_module_output_formats_and_dynamic_padding_like_timm(output_fmt, dynamic_img_pad):
    """timm's PatchEmbed contract: zero-pad the pixels up to a patch multiple (dynamic_img_pad), convolve,
    then flatten to (B, N, D) or lay the map out as output_fmt."""
    module = vtkernels.nn.PatchEmbed(img_size=None, patch_size=8, embed_dim=12, output_fmt=output_fmt,
                                     dynamic_img_pad=dynamic_img_pad)
    images = torch.randn(2, 3, 20 if dynamic_img_pad else 16, 27 if dynamic_img_pad else 24)
    conv = module.proj(F.pad(images, (0, (-images.shape[3]) % 8, 0, (-images.shape[2]) % 8)))  # (B, D, h, w)
    expected = {None: conv.flatten(2).transpose(1, 2), "NCHW": conv, "NHWC": conv.permute(0, 2, 3, 1),
                "NCL": conv.flatten(2), "NLC": conv.flatten(2).transpose(1, 2)}[output_fmt]
    out = module(images)
    assert out.shape == expected.shape and module.dynamic_feat_size(images.shape[-2:]) == tuple(conv.shape[-2:])
    assert_close(out, expected.double(), torch.float32)


def test_module_uint8_forward_tokens_and_padding(device):
    mean, std = [0.48, 0.46, 0.41], [0.27, 0.26, 0.28]
    module = vtkernels.nn.PatchEmbed(img_size=None, patch_size=16, embed_dim=32, dynamic_img_pad=True,
                                     image_mean=mean, image_std=std, backend="triton").to(device)
    assert set(module.state_dict()) == {"proj.weight", "proj.bias"}
    u8 = torch.randint(0, 256, (2, 30, 40, 3), dtype=torch.uint8, device=device)
    cls, pos = torch.randn(1, 1, 32, device=device), torch.randn(1, 7, 32, device=device)
    out = module.forward_tokens(u8, cls, pos)
    padded = F.pad(u8, (0, 0, 0, 8, 0, 2))  # timm pads the pixels with zeros (before normalizing)
    expected = ref.patch_embed(padded, module.proj.weight, module.proj.bias, 16, cls, pos,
                               torch.tensor(mean, device=device), torch.tensor(std, device=device))
    assert_close(out, expected.detach().double(), torch.float32)
    strict = vtkernels.nn.PatchEmbed(img_size=32, patch_size=16, embed_dim=32)
    with pytest.raises(ValueError, match="expects 32x32"):
        strict(torch.randn(1, 3, 32, 48))


def test_module_follows_autocast_dtype():
    module = vtkernels.nn.PatchEmbed(img_size=(32, 48), patch_size=16, embed_dim=32)  # fp32 parameters
    x = torch.randn(2, 3, 32, 48)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = module(x)
    assert out.dtype == torch.bfloat16
    expected = module.proj(x.bfloat16().float()).flatten(2).transpose(1, 2)
    assert rel_error(out, expected) < 1e-2


@pytest.mark.parametrize("antialias", [True, False])
def test_resample_pos_embed_matches_hf_and_keeps_prefix(antialias):
    pos = torch.randn(1, 1 + 4 * 4, 8)
    out = vtkernels.nn.resample_pos_embed(pos, (6, 5), (4, 4), num_prefix_tokens=1, antialias=antialias)
    assert out.shape == (1, 31, 8) and torch.equal(out[:, :1], pos[:, :1])
    grid = pos[:, 1:].reshape(1, 4, 4, 8).permute(0, 3, 1, 2)
    # HF (no antialias) is plain bicubic; timm's antialiased bicubic uses another kernel (a = -0.5).
    for size in ((6, 5), (2, 3)):
        out = vtkernels.nn.resample_pos_embed(pos, size, (4, 4), num_prefix_tokens=1, antialias=antialias)
        hf_style = F.interpolate(grid, size=size, mode="bicubic", align_corners=False)
        err = rel_error(out[:, 1:], hf_style.permute(0, 2, 3, 1).reshape(1, size[0] * size[1], 8))
        assert (err < 1e-6) == (not antialias), (size, err)
    assert vtkernels.nn.resample_pos_embed(pos, 4) is pos
    assert vtkernels.nn.resample_pos_embed(pos[0], (6, 5)).shape == (31, 8)


def test_resample_pos_embed_matches_hf_interpolate_pos_encoding():
    transformers = pytest.importorskip("transformers")
    config = transformers.ViTConfig(image_size=64, patch_size=16, hidden_size=24, num_channels=3)
    emb = transformers.models.vit.modeling_vit.ViTEmbeddings(config).eval()
    with torch.no_grad():
        emb.position_embeddings.normal_()
    expected = emb.interpolate_pos_encoding(torch.zeros(1, 1 + 2 * 3, 24), 32, 48)
    ours = vtkernels.nn.resample_pos_embed(emb.position_embeddings, (2, 3), (4, 4), antialias=False)
    torch.testing.assert_close(ours, expected)


def test_resample_pos_embed_matches_timm():
    timm_layers = pytest.importorskip("timm.layers")
    pos = torch.randn(1, 1 + 14 * 14, 16)
    expected = timm_layers.resample_abs_pos_embed(pos, (10, 12), (14, 14), num_prefix_tokens=1)
    torch.testing.assert_close(vtkernels.nn.resample_pos_embed(pos, (10, 12), (14, 14)), expected)


# --- dispatch and bad input -------------------------------------------------------------------

def test_cpu_tensor_forced_cuda_backend_is_refused():
    inputs = make_inputs("vit", torch.float32, "cpu")
    with pytest.raises(BackendError, match="CUDA tensor"):
        vtkernels.patch_embed(**inputs, backend="cuda")


@pytest.mark.parametrize("change, message", [
    (dict(patch_size=8), "weight must have shape"),
    (dict(patch_size=(16, 8)), "square"),
    (dict(images=torch.randn(2, 4, 32, 48)), "channels"),
    (dict(images=torch.randn(2, 3, 32, 48, dtype=torch.float16)), "images has dtype"),
    (dict(images=torch.randn(2, 3, 8, 48)), "smaller than patch_size"),
    (dict(images=torch.randint(0, 255, (2, 3, 32, 48), dtype=torch.uint8)), "channels"),
    (dict(images=torch.randint(0, 255, (2, 32, 48, 3), dtype=torch.int32)), "images has dtype"),
    (dict(bias=torch.randn(31)), "bias must have shape"),
    (dict(cls_token=torch.randn(1, 2, 32)), "cls_token"),
    (dict(pos_embed=torch.randn(1, 9, 32)), "pos_embed must have shape"),
    (dict(pos_embed=torch.randn(2, 7, 32)), "pos_embed must have shape"),
    (dict(pos_embed=torch.randn(1, 7, 32, dtype=torch.float64)), "pos_embed has dtype"),
    (dict(mean=torch.randn(4)), "mean must have shape"),
    (dict(std=torch.rand(3, requires_grad=True)), "std is a normalization constant"),
    (dict(bias=torch.randn(32, device="meta")), "bias is on meta"),
])
def test_bad_input_names_the_argument(change, message):
    inputs = {**make_inputs("vit", torch.float32, "cpu", requires_grad=False), **change}
    with pytest.raises((ValueError, TypeError), match=message):
        vtkernels.patch_embed(**inputs, backend="reference")


@pytest.mark.gpu
@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_gpu_opcheck(backend):
    inputs = make_inputs("uint8", torch.bfloat16, torch.device("cuda"))
    reasons = dispatcher.refusals(backend, torch.device("cuda"), weight=inputs["weight"])
    if reasons:
        pytest.skip("; ".join(reasons))
    images = ref.images_as_nchw(inputs["images"], False)
    scale, shift = torch.rand(3, device="cuda") + 0.5, torch.randn(3, device="cuda")
    args = (images, inputs["weight"], inputs["bias"], inputs["cls_token"].reshape(-1), inputs["pos_embed"][0],
            scale, shift, backend)
    torch.library.opcheck(torch.ops.vtkernels.patch_embed_fwd.default, args)
    out = torch.ops.vtkernels.patch_embed_fwd(*[a.detach() if isinstance(a, torch.Tensor) else a for a in args])
    torch.library.opcheck(torch.ops.vtkernels.patch_embed_bwd.default,
                          (torch.randn_like(out), images, inputs["weight"].detach(), scale, shift,
                           False, True, True, True, 7, backend))


@pytest.mark.parametrize("variant, size", [("vit", None), ("clip_no_bias", (80, 96)), ("no_embed_class", (80, 96)),
                                           ("float_normalized", None), ("patch32", None)])
def test_triton_image_through_tma(variant, size, monkeypatch):
    """The forward with the image read through a 5-D tensor descriptor (patch_embed_image_tma.py;
    emulated on the CPU): blocks of patches of one image, ragged at the map's edges (80 x 96:
    5 x 6 patches in 4 x 8 blocks), normalization in the loaded tile. Layouts it cannot read
    (NHWC: patch32) keep the pointer gather."""
    from vtkernels.triton import patch_embed as triton_patch_embed
    from vtkernels.triton import patch_embed_image_tma

    config, launches = triton_patch_embed.launch_config, []
    original_forward = patch_embed_image_tma.forward

    def image_tma_config(kind, *args):
        return {**config(kind, *args), **({"TMA": True, "IMAGE_TMA": True} if kind == "fwd" else {})}

    def recording_forward(*args):
        launches.append(args[0].shape)
        return original_forward(*args)
    monkeypatch.setattr(triton_patch_embed, "launch_config", image_tma_config)
    monkeypatch.setattr(patch_embed_image_tma, "forward", recording_forward)
    check_against_reference(variant, torch.float16, torch.device("cpu"), "triton", size=size)
    patch = VARIANTS[variant][0]
    height, width = size or image_size(patch)
    assert launches == ([] if variant == "patch32" else [(2 * 3, height // patch, width // patch, patch, patch)])
