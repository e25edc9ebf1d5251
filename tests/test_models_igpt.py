"""iGPT wrapper: vs HF ImageGPT (converted weights, tiny random configs), KV-cache decoding,
sampling with the cache == full recomputation under the same seed, fused vs reference mode."""

import copy

import pytest
import torch

import vtkernels
from vtkernels.models.igpt import ImageGPT, ImageGPTConfig, SIZES
from vtkernels.models.igpt_sampling import sample, sample_without_cache, top_k_gumbel
from vtkernels.testing import assert_close

from model_configs import IGPT_POSITIONS as N_POS
from model_configs import hf_igpt

transformers = pytest.importorskip("transformers")

@pytest.fixture(scope="module")
def hf_lm():
    return hf_igpt()


# HF divides the scores by torch_float(sqrt(head_dim)), a float32 scalar: ~1e-8 relative in float64.
# transformers 5.17 (fixed by 5.23) has torch_float return int(x), a scale of 1/int(sqrt(d)): head_dim 64 keeps
# sqrt(d) an integer, so HF is right on every version.
HF_TOL = 1e-6


def test_matches_hf_causal_lm_float64(hf_lm):
    hf = copy.deepcopy(hf_lm).double()  # the fixture stays float32 even if this test fails
    ours = ImageGPT.from_hf(hf)
    ids = torch.randint(0, 32, (3, N_POS))  # targets are colours (< 32): the SOS token is never predicted
    with torch.no_grad(), vtkernels.use_backend("reference"):
        assert_close(ours(ids), hf(ids).logits, torch.float64, tol=HF_TOL)
        hf_loss = hf(ids, labels=ids).loss
        assert_close(ours.loss(ids), hf_loss, torch.float64, tol=HF_TOL)


def test_matches_hf_bare_model_and_options():
    hf = hf_igpt(n_layer=3, scale_attn_by_inverse_layer_idx=True).transformer.double()
    ours = ImageGPT.from_hf(hf)
    assert ours.lm_head is None
    ids = torch.randint(0, 33, (2, 11))
    with torch.no_grad(), vtkernels.use_backend("reference"):
        assert_close(ours(ids), hf(ids).last_hidden_state, torch.float64, tol=HF_TOL)


@pytest.mark.interpreter
def test_fused_matches_reference_fp32_with_grads(hf_lm):
    ours = ImageGPT.from_hf(hf_lm).train()
    ids = torch.randint(0, 32, (2, 13))
    results = {}
    for backend in ("reference", "triton"):
        ours.zero_grad()
        ours.set_backend(backend)
        loss = ours.loss(ids)
        loss.backward()
        results[backend] = (loss.detach(), ours.wpe.weight.grad.clone(), ours.blocks[0].attn.qkv.weight.grad.clone(),
                            ours.blocks[1].norm1.weight.grad.clone())
    assert_close(results["triton"], results["reference"], torch.float32, tol=2e-5,
                 names=["loss", "d wpe", "d qkv", "d norm1"])


def test_kv_cache_decode_matches_full_forward(hf_lm):
    ours = ImageGPT.from_hf(hf_lm.double())
    hf_lm.float()
    ids = torch.randint(0, 33, (2, N_POS))
    with torch.no_grad(), vtkernels.use_backend("reference"):
        full = ours(ids)
        cache = ours.new_cache(2)
        steps = [ours.prefill(ids[:, :5], cache)]
        for i in range(5, N_POS):
            steps.append(ours.decode_step(ids[:, i], cache))
        assert int(cache.pos) == N_POS
    assert_close(torch.stack(steps, 1), full[:, 4:], torch.float64, tol=1e-10)


@pytest.mark.interpreter
@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_sampling_with_cache_equals_full_recomputation(hf_lm, backend):
    ours = ImageGPT.from_hf(hf_lm)
    ours.set_backend(backend)
    prompt = torch.randint(0, 32, (2, 3))
    for kwargs in ({}, {"prompt": prompt, "top_k": 5, "temperature": 0.7}):
        fast = sample(ours, 2, generator=torch.Generator().manual_seed(7), **kwargs)
        slow = sample_without_cache(ours, 2, generator=torch.Generator().manual_seed(7), **kwargs)
        assert fast.shape == (2, N_POS) and fast.max() < 32
        assert torch.equal(fast, slow)
        if "prompt" in kwargs:
            assert torch.equal(fast[:, :3], prompt)
    other_seed = sample(ours, 2, generator=torch.Generator().manual_seed(8))
    assert not torch.equal(other_seed, fast)


def test_compiled_decode_step_samples_the_same_tokens(hf_lm):
    ours = ImageGPT.from_hf(hf_lm)
    ours.set_backend("reference")
    eager = sample(ours, 2, num_tokens=8, generator=torch.Generator().manual_seed(3))
    compiled = sample(ours, 2, num_tokens=8, generator=torch.Generator().manual_seed(3), compile_step=True)
    assert torch.equal(eager, compiled)


def test_compiled_decode_step_writes_the_cache_in_place(hf_lm):
    """Inductor's code for a decode step writes k / v into the cache through kv_cache_write and
    makes no copy of it (traced as index_copy_, every layer's cache was copied and written back)."""
    from torch._inductor.utils import run_and_get_code

    from vtkernels.models.igpt import KVCache

    ours = ImageGPT.from_hf(hf_lm)
    ours.set_backend("reference")
    cache = KVCache(ours.config, 2, "cpu", torch.float32)
    step = torch.compile(ours.decode_step, fullgraph=True, dynamic=False)
    with torch.no_grad():  # as sample() runs it
        _, code = run_and_get_code(step, torch.zeros(2, dtype=torch.long), cache)
    code = "\n".join(code)
    assert "index_copy" not in code
    assert code.count("torch.ops.vtkernels.kv_cache_write.default(") == ours.config.depth
    assert torch.equal(cache.pos, torch.ones(1, dtype=torch.long)) and cache.keys[:, :, 0].abs().sum() > 0


def test_decode_step_writes_each_layers_key_and_value_in_one_copy(hf_lm):
    """One cache write per layer per step (the key and the value together): each is a kernel launch
    inside the sampler's CUDA graph, where the step time is launch overhead."""
    from torch.profiler import ProfilerActivity, profile

    ours = ImageGPT.from_hf(hf_lm)
    ours.set_backend("reference")
    cache = ours.new_cache(2)
    token = torch.zeros(2, dtype=torch.long)
    with torch.no_grad():
        ours.prefill(token[:, None], cache)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            ours.decode_step(token, cache)
    copies = [e for e in prof.events() if e.name == "aten::index_copy_"]
    assert len(copies) == ours.config.depth


def test_top_k_gumbel_samples_the_top_k_distribution():
    logits = torch.tensor([[2.0, 1.0, 0.5, -1.0, 3.0]]).expand(20000, -1)
    picks = top_k_gumbel(logits, torch.rand(20000, 5), top_k=3, temperature=1.0)
    freq = torch.bincount(picks, minlength=5).double() / picks.numel()
    expected = torch.zeros(5, dtype=torch.float64)
    expected[[0, 1, 4]] = torch.tensor([2.0, 1.0, 3.0], dtype=torch.float64).softmax(0)
    assert (freq - expected).abs().max() < 0.015


def test_images_round_trip_through_palette(hf_lm):
    ours = ImageGPT.from_hf(hf_lm, clusters=torch.rand(32, 3) * 2 - 1)
    images = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    tokens = ours.images_to_tokens(images)
    assert tokens.shape == (2, N_POS) and tokens.max() < 32
    back = ours.images_to_tokens(ours.tokens_to_images(tokens, (4, 4)))
    assert (back == tokens).float().mean() > 0.9


def test_errors():
    model = ImageGPT(ImageGPTConfig(vocab_size=33, n_positions=N_POS, dim=64, depth=1, num_heads=2))
    with pytest.raises(ValueError, match="n_positions"):
        model(torch.zeros(1, N_POS + 1, dtype=torch.long))
    with pytest.raises(ValueError, match="palette"):
        model.images_to_tokens(torch.zeros(1, 3, 4, 4, dtype=torch.uint8))
    with pytest.raises(ValueError, match="top_k"):
        sample(model, 1, top_k=0)
    with pytest.raises(ValueError, match="LM head"):
        sample(ImageGPT(model.config, head=False), 1)
    with pytest.raises(ValueError, match="size"):
        ImageGPT.from_size("XL")
    assert SIZES["L"].dim == 1536 and SIZES["M"].depth == 36


@pytest.mark.interpreter
def test_compile_fullgraph_forward(hf_lm):
    ours = ImageGPT.from_hf(hf_lm)
    ours.set_backend("triton")
    ids = torch.randint(0, 33, (1, 8))
    with torch.no_grad():
        compiled = torch.compile(ours, fullgraph=True)
        assert_close(compiled(ids), ours(ids), torch.float32)


@pytest.mark.gpu
def test_gpu_bf16_cuda_graph_sampling():
    model = ImageGPT.from_size("S").cuda().to(torch.bfloat16).eval()
    model.clusters = torch.rand(512, 3, device="cuda") * 2 - 1
    torch.manual_seed(0)
    tokens = model.generate(8, top_k=40, cuda_graph=True)
    assert tokens.shape == (8, 1024) and tokens.max() < 512
    assert model.generate(2, num_tokens=64, cuda_graph=True, compile_step=True).shape == (2, 64)
    images = model.tokens_to_images(tokens, (32, 32))
    assert images.shape == (8, 3, 32, 32) and images.dtype == torch.uint8
    # bf16 KV-cache decoding on the GPU kernels agrees with the full forward at the same prefix
    prefix = torch.cat([torch.full((8, 1), 512, device="cuda"), tokens[:, :63]], 1)
    with torch.no_grad():
        cache = model.new_cache(8)
        model.prefill(prefix[:, :32], cache)
        for i in range(32, 64):
            logits = model.decode_step(prefix[:, i], cache)
        with vtkernels.use_backend("reference"):
            full = model.double()(prefix)[:, -1]
    assert_close(logits.float(), full, torch.bfloat16, tol=3e-2)
