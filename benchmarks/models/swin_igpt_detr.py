"""End-to-end model benchmarks (bf16 inference): Swin-T and Swin-B@384 classification, DETR-R50
detection and iGPT-S image sampling, vtkernels against timm / HF eager, torch.compile, and
``vtkernels.optimize`` applied to the timm / HF models.

Targets: Swin-T B=256 >= 2x timm eager and >= 1.25x timm + compile; Swin-B@384 (window 12) B=32
>= 2x timm eager; DETR-R50 800x1066 B=8 >= 1.3x HF eager; iGPT-S
sampling 8 images of 32x32 (1024 tokens, top-k 40) <= 1.5 s (static KV cache + CUDA graph).
Every model is built from a config with random weights (no download); a provider that cannot
run (timm missing, a compile failure) becomes a record with its error.
"""

from __future__ import annotations

import torch

import vtkernels
from benchmarks.harness import BenchCase

DTYPE = torch.bfloat16


def _cuda_bf16(model):
    return model.to(device="cuda", dtype=DTYPE).eval()


def _inference(model_fn, make_inputs, compile_model=False):
    def make():
        model = model_fn()
        if compile_model:
            model = torch.compile(model, dynamic=False)
        inputs = make_inputs()

        def run():
            with torch.no_grad():
                return model(*inputs)
        return run
    return make


# -- Swin ---------------------------------------------------------------------------------
# (timm model name, our size and overrides, batch, quick batch, GMACs per image)
SWIN_PRESETS = {
    "Swin-T": ("swin_tiny_patch4_window7_224", ("T", {}), 256, 64, 4.5),
    "Swin-B@384": ("swin_base_patch4_window12_384", ("B", {"img_size": 384, "window_size": 12}), 32, 8, 47.1),
}


def _swin_config(preset: str):
    import dataclasses

    from vtkernels.models.swin import SIZES

    size, overrides = SWIN_PRESETS[preset][1]
    return dataclasses.replace(SIZES[size], **overrides)


def _timm_swin(preset: str, optimize: bool = False):
    import timm

    model = _cuda_bf16(timm.create_model(SWIN_PRESETS[preset][0], pretrained=False))
    return vtkernels.optimize(model) if optimize else model


def _vtk_swin(preset: str):
    from vtkernels.models.swin import Swin

    return _cuda_bf16(Swin(_swin_config(preset)))


def _hf_swin(preset: str, optimize: bool = False):
    import transformers

    ours = _swin_config(preset)
    config = transformers.SwinConfig(image_size=ours.img_size, window_size=ours.window_size, embed_dim=ours.embed_dim,
                                     depths=list(ours.depths), num_heads=list(ours.num_heads), num_labels=1000)
    model = _cuda_bf16(transformers.SwinForImageClassification(config))
    return vtkernels.optimize(model) if optimize else model


def _swin_cases(quick):
    for preset, (_, _, full_batch, quick_batch, gmacs) in SWIN_PRESETS.items():
        batch = quick_batch if quick else full_batch
        side = _swin_config(preset).img_size
        label = f"{preset} {batch}x3x{side}x{side}"
        images = lambda batch=batch, side=side: (torch.randn(batch, 3, side, side, device="cuda", dtype=DTYPE),)  # noqa: E731
        providers = {
            "vtkernels": (lambda p=preset: _vtk_swin(p), False),
            "vtkernels+compile": (lambda p=preset: _vtk_swin(p), True),
            "timm": (lambda p=preset: _timm_swin(p), False),
            "timm+compile": (lambda p=preset: _timm_swin(p), True),
            "timm+optimize": (lambda p=preset: _timm_swin(p, optimize=True), False),
            "hf": (lambda p=preset: _hf_swin(p), False),
            "hf+optimize": (lambda p=preset: _hf_swin(p, optimize=True), False),
        }
        for provider, (fn, compiled) in providers.items():
            yield BenchCase("swin", label, "fwd", provider, _inference(fn, images, compiled), flops=2e9 * gmacs * batch,
                            baseline="timm")


# -- DETR-R50 -----------------------------------------------------------------------------
def _hf_detr_r50():
    import transformers

    backbone = transformers.ResNetConfig(out_features=["stage4"])  # ResNet-50
    config = transformers.DetrConfig(use_timm_backbone=False, backbone_config=backbone)
    return _cuda_bf16(transformers.DetrForObjectDetection(config))


def _vtk_detr_r50():
    from vtkernels.models.detr import DETR

    return DETR.from_hf(_hf_detr_r50()).fuse_backbone_for_inference(channels_last=True)


def _detr_cases(quick):
    batch = 2 if quick else 8
    label = f"DETR-R50 {batch}x3x800x1066"

    def inputs():
        pixels = torch.randn(batch, 3, 800, 1066, device="cuda", dtype=DTYPE)
        mask = torch.ones(batch, 800, 1066, device="cuda", dtype=torch.long)
        mask[1:, :, 1000:] = 0  # some padding, as in a batch of differently sized images
        return pixels, mask

    providers = {"vtkernels": (_vtk_detr_r50, False), "vtkernels+compile": (_vtk_detr_r50, True),
                 "hf": (_hf_detr_r50, False), "hf+compile": (_hf_detr_r50, True)}
    for provider, (fn, compiled) in providers.items():
        yield BenchCase("detr", label, "fwd", provider, _inference(fn, inputs, compiled), baseline="hf")


# -- iGPT-S sampling ----------------------------------------------------------------------
def _hf_igpt_s():
    import transformers

    config = transformers.ImageGPTConfig(n_embd=512, n_layer=24, n_head=8)
    return _cuda_bf16(transformers.ImageGPTForCausalImageModeling(config))


def _igpt_cases(quick):
    batch, tokens = 8, (256 if quick else 1024)
    label = f"iGPT-S sample {batch}x{tokens} top-k 40"

    def vtk(cuda_graph, compile_step=False):
        def make():
            from vtkernels.models.igpt import ImageGPT

            model = ImageGPT.from_hf(_hf_igpt_s())
            return lambda: model.generate(batch, num_tokens=tokens, top_k=40, cuda_graph=cuda_graph,
                                          compile_step=compile_step)
        return make

    def hf():
        model = _hf_igpt_s()
        sos = torch.full((batch, 1), model.config.vocab_size - 1, device="cuda")

        def run():
            with torch.no_grad():
                return model.generate(input_ids=sos, max_length=tokens + 1, do_sample=True, top_k=40,
                                      pad_token_id=0)
        return run

    yield BenchCase("igpt_sample", label, "fwd", "vtkernels+cuda_graph", vtk(True), baseline="hf")
    yield BenchCase("igpt_sample", label, "fwd", "vtkernels+compile+cuda_graph", vtk(True, True), baseline="hf")
    yield BenchCase("igpt_sample", label, "fwd", "vtkernels", vtk(False), baseline="hf")
    yield BenchCase("igpt_sample", label, "fwd", "hf", hf, baseline="hf")


def cases(quick: bool = False):
    yield from _swin_cases(quick)
    yield from _detr_cases(quick)
    yield from _igpt_cases(quick)
