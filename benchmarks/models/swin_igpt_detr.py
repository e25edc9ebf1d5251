"""End-to-end model benchmarks (bf16 inference): Swin-T classification, DETR-R50 detection and
iGPT-S image sampling, vtkernels against timm / HF eager and torch.compile.

Targets: Swin-T B=256 >= 2x timm eager; DETR-R50 800x1066 B=8 >= 1.3x HF eager; iGPT-S
sampling 8 images of 32x32 (1024 tokens, top-k 40) <= 1.5 s (static KV cache + CUDA graph).
Every model is built from a config with random weights (no download); a provider that cannot
run (timm missing, a compile failure) becomes a record with its error.
"""

from __future__ import annotations

import torch

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


# -- Swin-T -------------------------------------------------------------------------------
def _timm_swin_t():
    import timm

    return _cuda_bf16(timm.create_model("swin_tiny_patch4_window7_224", pretrained=False))


def _vtk_swin_t():
    from vtkernels.models.swin import Swin

    return _cuda_bf16(Swin.from_size("T"))


def _hf_swin_t():
    import transformers

    config = transformers.SwinConfig(embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], num_labels=1000)
    return _cuda_bf16(transformers.SwinForImageClassification(config))


def _swin_cases(quick):
    batch = 64 if quick else 256
    label = f"Swin-T {batch}x3x224x224"
    images = lambda: (torch.randn(batch, 3, 224, 224, device="cuda", dtype=DTYPE),)  # noqa: E731
    flops = 4.5e9 * batch * 2  # ~4.5 GMACs per image
    providers = {"vtkernels": (_vtk_swin_t, False), "vtkernels+compile": (_vtk_swin_t, True),
                 "timm": (_timm_swin_t, False), "timm+compile": (_timm_swin_t, True), "hf": (_hf_swin_t, False)}
    for provider, (fn, compiled) in providers.items():
        yield BenchCase("swin", label, "fwd", provider, _inference(fn, images, compiled), flops=flops, baseline="timm")


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
