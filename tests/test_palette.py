"""iGPT colour palette op: reference vs HF, Triton vs reference, inverse, errors, compile."""

import pytest
import torch

import vtkernels
from vtkernels.ops.palette import palette_dequantize, palette_quantize, palette_quantize_op, palette_dequantize_op
from vtkernels.reference import palette as ref

BACKENDS = ["reference", "triton"]


def random_clusters(k, device="cpu", dtype=torch.float32):
    return (torch.rand(k, 3, device=device) * 2 - 1).to(dtype)


def random_images(b, h, w, device="cpu"):
    return torch.randint(0, 256, (b, 3, h, w), dtype=torch.uint8, device=device)


def assert_nearest(tokens, image_nchw, clusters, exact=None):
    """Each id's cluster is (within fp32 rounding) a nearest one; optionally equal to ``exact``."""
    pixels = image_nchw.flatten(2).transpose(1, 2)
    d = ref.squared_distances(pixels.cpu(), clusters.double().cpu())
    chosen = d.gather(-1, tokens.cpu().long()[..., None])[..., 0]
    assert (chosen <= d.min(-1).values + 1e-6).all()
    if exact is not None:
        assert torch.equal(tokens.cpu(), exact.cpu())


def hf_color_quantize(x, clusters):
    """HF ImageGPTImageProcessor's color_quantize_torch (its module needs torchvision, absent here)."""
    d = (x**2).sum(1)[:, None] - 2 * x @ clusters.T + (clusters**2).sum(1)[None, :]
    return d.argmin(1)


def test_reference_matches_hf_processor_quantizer():
    clusters = random_clusters(512)
    image = random_images(2, 9, 7)
    normalized = (image.float() / 255 - 0.5) / 0.5  # HF rescale + normalize
    hf = hf_color_quantize(normalized.permute(0, 2, 3, 1).reshape(-1, 3), clusters).view(2, -1)
    ours = palette_quantize(image, clusters, backend="reference")
    assert ours.dtype == torch.int64 and ours.shape == (2, 63)
    assert_nearest(ours, image, clusters)
    assert (ours == hf).float().mean() > 0.99  # HF's a^2 - 2ab + b^2 may flip near-ties


@pytest.mark.parametrize("k", [512, 37, 1])
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_triton_quantize_matches_reference(k, layout, device):
    clusters = random_clusters(k, device)
    image = random_images(3, 11, 13, device)
    arg = image if layout == "nchw" else image.permute(0, 2, 3, 1).contiguous()
    expected = palette_quantize(image, clusters, backend="reference")
    out = palette_quantize(arg, clusters, layout=layout, backend="triton")
    assert_nearest(out, image, clusters, exact=expected if device.type == "cpu" else None)


def test_triton_quantize_ties_and_noncontiguous(device):
    # Duplicate clusters: the lowest id must win; a strided (channels-last memory) image.
    base = random_clusters(20, device)
    clusters = torch.cat([base, base])  # ids 20..39 duplicate 0..19
    image = random_images(2, 8, 6, device).to(memory_format=torch.channels_last)
    out = palette_quantize(image, clusters, backend="triton")
    assert out.max() < 20
    assert_nearest(out, image, clusters, exact=palette_quantize(image, clusters, backend="reference"))


def test_quantize_fp16_clusters_and_edges(device):
    clusters = random_clusters(64, device, torch.float16)
    image = random_images(1, 5, 5, device)
    assert_nearest(palette_quantize(image, clusters, backend="triton"), image, clusters)
    empty = torch.empty(0, 3, 4, 4, dtype=torch.uint8, device=device)
    assert palette_quantize(empty, clusters, backend="triton").shape == (0, 16)


def test_exact_colours_map_to_their_cluster(device):
    # A pixel that is exactly a cluster colour (p / 127.5 - 1) must get that cluster's id.
    levels = torch.tensor([0, 37, 128, 255])
    grid = torch.cartesian_prod(levels, levels, levels)  # (64, 3)
    clusters = ref.pixels_to_unit(grid.to(torch.uint8)).to(device)
    image = grid.T.reshape(1, 3, 8, 8).to(torch.uint8).to(device)
    for backend in BACKENDS:
        assert torch.equal(palette_quantize(image, clusters, backend=backend).cpu(), torch.arange(64)[None])


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("token_dtype", [torch.int64, torch.int32])
def test_dequantize_matches_hf_formula(layout, token_dtype, device):
    clusters = random_clusters(512, device)
    clusters[:3] = torch.tensor([[-1.0, 1.0, 0.0], [1 / 127.5 - 1, 3 / 255 - 1, 5 / 255 - 1], [1.2, -1.3, 0.5]])
    tokens = torch.randint(0, 512, (3, 35), device=device).to(token_dtype)
    tokens[0, :3] = torch.arange(3)
    hf = torch.round(127.5 * (clusters[tokens.long()] + 1.0)).clamp(0, 255).to(torch.uint8)  # HF's np.rint
    hf = hf.view(3, 5, 7, 3)
    hf = hf.permute(0, 3, 1, 2) if layout == "nchw" else hf
    for backend in BACKENDS:
        out = palette_dequantize(tokens, clusters, (5, 7), layout=layout, backend=backend)
        assert out.dtype == torch.uint8 and out.shape == hf.shape
        assert torch.equal(out.cpu(), hf.cpu()), backend


def test_round_trip(device):
    clusters = random_clusters(16, device)
    tokens = torch.randint(0, 16, (2, 12), device=device)
    for backend in BACKENDS:
        image = palette_dequantize(tokens, clusters, (3, 4), backend=backend)
        back = palette_quantize(image, clusters, backend=backend)
        assert_nearest(back, image, clusters)
        # rint moves a colour by <= 0.5/127.5: it stays nearest unless two clusters are that close
        assert (back == tokens).float().mean() > 0.9


def test_bad_inputs_name_the_argument():
    clusters = random_clusters(8)
    image = random_images(1, 4, 4)
    with pytest.raises(TypeError, match="image"):
        palette_quantize(image.float(), clusters)
    with pytest.raises(ValueError, match="channels"):
        palette_quantize(image, clusters, layout="nhwc")
    with pytest.raises(ValueError, match="clusters"):
        palette_quantize(image, clusters[:, :2])
    with pytest.raises(ValueError, match="layout"):
        palette_quantize(image, clusters, layout="chw")
    with pytest.raises(ValueError, match="image_size"):
        palette_dequantize(torch.zeros(1, 10, dtype=torch.long), clusters, (3, 4))
    with pytest.raises(ValueError, match=r"tokens must lie in \[0, 8\)"):
        palette_dequantize(torch.full((1, 12), 8), clusters, (3, 4))
    with pytest.raises(TypeError, match="tokens"):
        palette_dequantize(torch.zeros(1, 12), clusters, (3, 4))
    with pytest.raises(vtkernels.BackendError, match="CUDA tensor"):
        palette_quantize(image, clusters, backend="cuda")


def test_kernels_refuse_batches_beyond_the_grid(device):
    """Both kernel backends launch one grid row per image: past 65535 images the reference runs."""
    from vtkernels.ops.palette import dispatcher

    clusters = random_clusters(8, device)
    assert not dispatcher.refusals("triton", clusters.device, clusters=clusters, batch=65535)
    assert "65535" in " ".join(dispatcher.refusals("triton", clusters.device, clusters=clusters, batch=65536))


@pytest.mark.interpreter
def test_opcheck():
    clusters = random_clusters(40)
    pixels = random_images(2, 5, 3).flatten(2).transpose(1, 2)
    torch.library.opcheck(palette_quantize_op, (pixels, clusters, "triton"))
    tokens = torch.randint(0, 40, (2, 15))
    for channels_first in (True, False):
        torch.library.opcheck(palette_dequantize_op, (tokens, clusters, channels_first, "triton"))


@pytest.mark.interpreter
def test_compile_fullgraph():
    clusters = random_clusters(32)
    image = random_images(2, 4, 6)

    def round_trip(img):
        ids = palette_quantize(img, clusters, backend="triton")
        return ids, palette_dequantize(ids, clusters, (4, 6), backend="triton")

    ids, back = torch.compile(round_trip, fullgraph=True)(image)
    assert torch.equal(ids, palette_quantize(image, clusters, backend="reference"))
    assert torch.equal(back, palette_dequantize(ids, clusters, (4, 6), backend="reference"))


@pytest.mark.gpu
def test_gpu_large_batch_bf16_clusters():
    clusters = random_clusters(512, "cuda", torch.bfloat16)
    image = random_images(8, 32, 32, "cuda")
    assert_nearest(palette_quantize(image, clusters), image, clusters)


@pytest.mark.gpu
@pytest.mark.extension
@pytest.mark.parametrize("cluster_dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_gpu_cuda_kernels_match_reference_exactly(cluster_dtype):
    clusters = random_clusters(700, "cuda", cluster_dtype)  # two shared-memory chunks
    clusters[600:] = clusters[:100]  # duplicates: the lowest id must win
    image = random_images(3, 33, 31, "cuda").to(memory_format=torch.channels_last)
    ids = palette_quantize(image, clusters, backend="cuda")
    assert torch.equal(ids, palette_quantize(image, clusters, backend="reference"))  # no FMA: bit-exact
    for layout in ("nchw", "nhwc"):
        for tokens in (ids, ids.int()):
            out = palette_dequantize(tokens, clusters, (33, 31), layout=layout, backend="cuda")
            assert torch.equal(out, palette_dequantize(tokens, clusters, (33, 31), layout=layout, backend="reference"))
    empty = torch.empty(0, 3, 4, 4, dtype=torch.uint8, device="cuda")
    assert palette_quantize(empty, clusters, backend="cuda").shape == (0, 16)
