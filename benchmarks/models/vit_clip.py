"""End-to-end ViT and CLIP benchmarks, bf16: inference and one training step.

Providers per model: ours (``vtkernels``, automatic backend) eager and under ``torch.compile``;
HF transformers eager (SDPA attention), under ``torch.compile``, and patched by
``vtkernels.optimize``; timm eager / compiled / optimized when timm is importable (ViT, and the CLIP ViT-L/14@336 image
tower that issue 7 measures against timm).
Every model is built from its config (no download) with random weights, cast to bf16.

A record's median is milliseconds per batch; throughput is ``extra["images"]`` (or
``extra["texts"]``) / median seconds: images/s, texts/s. ``flops`` counts the GEMMs and the
attention products (x3 for a training step), so "% of floor" is model FLOP utilization.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

import vtkernels
from benchmarks.harness import BenchCase
from vtkernels.models import CLIP, ViT, ViTConfig

DTYPE = torch.bfloat16
VIT_SHAPES = {"ViT-B/16 224px": ("B/16", 256), "ViT-L/16 224px": ("L/16", 64)}  # preset, batch
CLIP_SHAPE = ("CLIP ViT-B/16 224px + text 77", "B/16", 256)
CLIP_TOWER_SHAPE = ("CLIP ViT-L/14 336px image tower", 32)  # against timm's vit_large_patch14_clip_quickgelu_336


def _compiled(model):
    return torch.compile(model, dynamic=False)


def _transformer_flops(tokens: int, dim: int, mlp: int, depth: int, causal: bool = False) -> float:
    linear = 2 * tokens * (4 * dim * dim + 2 * dim * mlp)
    attention = 4 * tokens * tokens * dim * (0.5 if causal else 1.0)
    return depth * (linear + attention)


def vit_flops(model: ViT, batch: int) -> float:
    c = model.config
    patches = c.grid_size**2
    embed = 2 * patches * c.in_chans * c.patch_size**2 * c.embed_dim
    body = _transformer_flops(patches + c.num_prefix_tokens, c.embed_dim, c.mlp_dim, c.depth)
    return batch * (embed + body + 2 * c.embed_dim * max(c.num_classes, 0))


def _clip_tower_flops(model: CLIP, batch: int):
    v, t = model.config.vision, model.config.text
    patches = (v.image_size // v.patch_size) ** 2
    image = batch * (2 * patches * v.in_chans * v.patch_size**2 * v.width
                     + _transformer_flops(patches + 1, v.width, v.mlp_dim, v.layers))
    text = batch * _transformer_flops(t.context_length, t.width, t.mlp_dim, t.layers, causal=True)
    return image, text


# --- model builders (inside make(): a failing peer costs one record) --------------------------

def _hf_vit(preset: str):
    from transformers import ViTConfig as HFViTConfig, ViTForImageClassification

    ours = ViTConfig.preset(preset)
    config = HFViTConfig(image_size=ours.img_size, patch_size=ours.patch_size, hidden_size=ours.embed_dim,
                         num_hidden_layers=ours.depth, num_attention_heads=ours.num_heads,
                         intermediate_size=ours.mlp_dim, num_labels=1000, layer_norm_eps=1e-6)
    config._attn_implementation = "sdpa"
    with torch.device("cuda"):
        return ViTForImageClassification(config).to(DTYPE)


def _timm_vit(preset: str):
    import timm

    name = {"B/16": "vit_base_patch16_224", "L/16": "vit_large_patch16_224"}[preset]
    with torch.device("cuda"):
        return timm.create_model(name, pretrained=False).to(DTYPE)


def _ours_vit(preset: str):
    with torch.device("cuda"):
        return ViT(preset).to(DTYPE)


def _hf_clip(preset: str):
    from transformers import CLIPConfig as HFCLIPConfig, CLIPModel

    from vtkernels.models import CLIPConfig

    c = CLIPConfig.preset(preset)
    config = HFCLIPConfig(
        text_config=dict(vocab_size=c.text.vocab_size, hidden_size=c.text.width, intermediate_size=c.text.mlp_dim,
                         num_hidden_layers=c.text.layers, num_attention_heads=c.text.heads,
                         max_position_embeddings=c.text.context_length),
        vision_config=dict(image_size=c.vision.image_size, patch_size=c.vision.patch_size,
                           hidden_size=c.vision.width, intermediate_size=c.vision.mlp_dim,
                           num_hidden_layers=c.vision.layers, num_attention_heads=c.vision.heads),
        projection_dim=c.embed_dim)
    config._attn_implementation = "sdpa"
    for sub in (config.text_config, config.vision_config):
        sub._attn_implementation = "sdpa"
    with torch.device("cuda"):
        return CLIPModel(config).to(DTYPE)


def _ours_clip(preset: str):
    with torch.device("cuda"):
        return CLIP(preset).to(DTYPE)


def _clip_l14_336_tower_providers() -> dict:
    """provider -> builder returning (module, forward(images) -> features): OpenAI's ViT-L/14@336
    image tower (QuickGELU, ln_pre, projection to 768) as ours and as timm builds it."""
    from vtkernels.models import CLIPConfig
    from vtkernels.models.clip import CLIPVisionTower

    def ours(compile_: bool):
        config = CLIPConfig.preset("L/14")
        config.vision.image_size = 336
        with torch.device("cuda"):
            tower = CLIPVisionTower(config.vision, config.embed_dim).to(DTYPE)
        return tower, (_compiled(tower) if compile_ else tower)

    def timm_tower(compile_: bool = False, optimize: bool = False):
        import timm

        with torch.device("cuda"):
            tower = timm.create_model("vit_large_patch14_clip_quickgelu_336", pretrained=False, num_classes=768)
        tower = tower.to(DTYPE)
        if optimize:
            vtkernels.optimize(tower)
        return tower, (_compiled(tower) if compile_ else tower)

    return {
        "vtkernels": lambda: ours(False),
        "vtkernels+compile": lambda: ours(True),
        "timm": lambda: timm_tower(),
        "timm+compile": lambda: timm_tower(compile_=True),
        "timm+optimize": lambda: timm_tower(optimize=True),
    }


def _vit_providers(preset: str) -> dict:
    """provider -> builder returning (module, forward(images) -> logits)."""
    def plain(module, compile_: bool = False):
        return module, (_compiled(module) if compile_ else module)

    def hf(compile_: bool = False, optimize: bool = False):
        module = _hf_vit(preset)
        if optimize:
            vtkernels.optimize(module)
        forward = _compiled(module) if compile_ else module
        return module, (lambda x: forward(pixel_values=x).logits)

    return {
        "vtkernels": lambda: plain(_ours_vit(preset)),
        "vtkernels+compile": lambda: plain(_ours_vit(preset), compile_=True),
        "hf": lambda: hf(),
        "hf+compile": lambda: hf(compile_=True),
        "hf+optimize": lambda: hf(optimize=True),
        "timm": lambda: plain(_timm_vit(preset)),
        "timm+compile": lambda: plain(_timm_vit(preset), compile_=True),
        "timm+optimize": lambda: plain(vtkernels.optimize(_timm_vit(preset))),
    }


def _vit_case(build, batch: int, train: bool, side: int = 224):
    def make():
        module, model = build()
        module.train(train)  # (before the first call: a compiled provider traces the mode it sees)
        images = torch.randn(batch, 3, side, side, device="cuda", dtype=DTYPE)
        if not train:
            def infer():
                with torch.no_grad():
                    return model(images)
            return infer
        labels = torch.randint(0, 1000, (batch,), device="cuda")
        optimizer = torch.optim.AdamW(module.parameters(), lr=1e-4, fused=True)

        def step():
            loss = F.cross_entropy(model(images).float(), labels)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return step
    return make


def _text_ids(batch: int, length: int, vocab: int) -> torch.Tensor:
    ids = torch.randint(1, vocab - 1, (batch, length), device="cuda")
    eot = torch.randint(length // 4, length, (batch,), device="cuda")
    ids[torch.arange(batch, device="cuda"), eot] = vocab - 1  # EOT: the largest id (argmax pooling)
    return ids


def _clip_providers(preset: str) -> dict:
    """provider -> builder returning (encode_image, encode_text, train_loss(images, ids))."""
    def ours(compile_: bool):
        model = _ours_clip(preset)
        wrap = _compiled if compile_ else (lambda f: f)
        return model, wrap(model.encode_image), wrap(model.encode_text), wrap(model.loss)

    def hf(compile_: bool, optimize: bool):
        model = _hf_clip(preset)
        if optimize:
            vtkernels.optimize(model)
        wrap = _compiled if compile_ else (lambda f: f)
        image = wrap(lambda x: _pooled(model.get_image_features(pixel_values=x)))
        text = wrap(lambda ids: _pooled(model.get_text_features(input_ids=ids)))
        loss = wrap(lambda x, ids: model(input_ids=ids, pixel_values=x, return_loss=True).loss)
        return model, image, text, loss

    return {
        "vtkernels": lambda: ours(False),
        "vtkernels+compile": lambda: ours(True),
        "hf": lambda: hf(False, False),
        "hf+compile": lambda: hf(True, False),
        "hf+optimize": lambda: hf(False, True),
    }


def _clip_case(build, batch: int, what: str, vocab: int, length: int):
    def make():
        model, encode_image, encode_text, loss_fn = build()
        model.train(what == "train")
        images = torch.randn(batch, 3, 224, 224, device="cuda", dtype=DTYPE)
        ids = _text_ids(batch, length, vocab)
        if what == "image":
            return lambda: _no_grad(encode_image, images)
        if what == "text":
            return lambda: _no_grad(encode_text, ids)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)

        def step():
            loss_fn(images, ids).float().backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return step
    return make


def _pooled(output) -> torch.Tensor:
    """HF get_image/text_features: a tensor in transformers 4.x, an output object in 5.x."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def _no_grad(fn, *args):
    with torch.no_grad():
        return fn(*args)


def cases(quick: bool = False):
    shapes = dict(list(VIT_SHAPES.items())[:1]) if quick else VIT_SHAPES
    for label, (preset, batch) in shapes.items():
        with torch.device("meta"):
            flops = vit_flops(ViT(preset), batch)
        for provider, build in _vit_providers(preset).items():
            yield BenchCase("vit", label + f" bs{batch}", "fwd", provider, _vit_case(build, batch, False),
                            flops=flops, baseline="timm", extra={"images": batch})
            if quick:
                continue
            train_batch = batch  # issue 7: training at the inference batch (ViT-B/16: 256)
            yield BenchCase("vit", label + f" bs{train_batch}", "train", provider,
                            _vit_case(build, train_batch, True), flops=3 * flops * train_batch / batch,
                            baseline="timm", extra={"images": train_batch})
    if quick:
        return
    label, batch = CLIP_TOWER_SHAPE
    with torch.device("meta"):
        tower_config = CLIP("L/14").config
        tower_config.vision.image_size = 336
        tower_flops, _ = _clip_tower_flops(CLIP(tower_config), batch)
    for provider, build in _clip_l14_336_tower_providers().items():
        yield BenchCase("clip_image", f"{label} bs{batch}", "fwd", provider, _vit_case(build, batch, False, side=336),
                        flops=tower_flops, baseline="timm", extra={"images": batch})
    label, preset, batch = CLIP_SHAPE
    with torch.device("meta"):
        reference = CLIP(preset)
    image_flops, text_flops = _clip_tower_flops(reference, batch)
    vocab, length = reference.config.text.vocab_size, reference.config.text.context_length
    for provider, build in _clip_providers(preset).items():
        shape = f"{label} bs{batch}"
        yield BenchCase("clip_image", shape, "fwd", provider, _clip_case(build, batch, "image", vocab, length),
                        flops=image_flops, baseline="hf", extra={"images": batch})
        yield BenchCase("clip_text", shape, "fwd", provider, _clip_case(build, batch, "text", vocab, length),
                        flops=text_flops, baseline="hf", extra={"texts": batch})
        yield BenchCase("clip", shape, "train", provider, _clip_case(build, batch, "train", vocab, length),
                        flops=3 * (image_flops + text_flops), baseline="hf", extra={"images": batch, "texts": batch})
