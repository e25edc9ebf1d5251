"""The issues' acceptance numbers, checked against a benchmark run's records.

Each :class:`Target` names benchmark cases (op, mode, shape pattern), "ours" (the faster of our
providers counts, as the issues say) and one criterion: a peer with the ratio to reach (peer time /
our time, or peer memory / our memory), or an absolute bound (ms, TB/s, % of the hardware floor,
peak extra memory). The issues' absolute numbers are H100 (80 GB) figures; on another GPU they are
a guide, and the table says which GPU measured. Our providers failing a case (an error, out of
memory) misses the target; a peer that did not run leaves it not measured. The verdict is on
do_bench's medians (the published figures); a second column evaluates the time targets on the GPU
time alone (the records' ``queued_ms``, launch gaps left out), which tells a slow kernel from a
host-bound call.

    python benchmarks/targets.py results.json     # the table for a committed run

``benchmarks/run.py`` appends the same table to results.md.
"""

from __future__ import annotations

import dataclasses
import json
import re
import sys
from typing import Optional, Sequence

KERNELS = ("vtkernels-triton", "vtkernels-cuda")
MODELS = ("vtkernels", "vtkernels+compile")
ATTENTION_SHORT = r"ViT-B/16|ViT-H/14|CLIP-text"  # N <= 257: the 1.2x cases


@dataclasses.dataclass(frozen=True)
class Target:
    issue: int
    claim: str
    op: str
    mode: str
    shape: str                              # regular expression over the case's shape label
    ours: Sequence[str] = KERNELS
    peer: Sequence[str] = ()                # the fastest of these is the peer ("sdpa-*": every SDPA backend)
    min_ratio: Optional[float] = None       # peer time / our time
    min_memory_ratio: Optional[float] = None  # peer's peak extra memory / ours
    max_ms: Optional[float] = None
    min_tbps: Optional[float] = None
    min_pct_of_floor: Optional[float] = None  # the record's % of the bytes / FLOP floor (100: at the floor)
    max_extra_gb: Optional[float] = None


TARGETS = [
    Target(2, "layer_norm fwd >= 2.8 TB/s (H100)", "layer_norm", "fwd", ".", min_tbps=2.8),
    Target(2, "layer_norm fwd >= 1.7x eager", "layer_norm", "fwd", ".", peer=("torch",), min_ratio=1.7),
    Target(2, "layer_norm fwd >= torch.compile", "layer_norm", "fwd", ".", peer=("torch.compile",), min_ratio=1.0),
    Target(2, "layer_norm fwd+bwd >= 2.0 TB/s (H100)", "layer_norm", "fwd+bwd", ".", min_tbps=2.0),
    Target(2, "layer_norm fwd+bwd >= 1.7x the best peer", "layer_norm", "fwd+bwd", ".",
           peer=("torch", "torch.compile", "liger"), min_ratio=1.7),
    Target(2, "add + layer_norm >= 1.6x the unfused pair", "add_layer_norm", "fwd", ".", peer=("torch",),
           min_ratio=1.6),
    *(Target(3, f"attention {mode} >= 1.0x the best SDPA backend", "attention", mode, ".", peer=("sdpa-*",),
             min_ratio=1.0) for mode in ("fwd", "fwd+bwd")),
    *(Target(3, f"attention {mode} >= 1.2x the best SDPA backend at N <= 257", "attention", mode, ATTENTION_SHORT,
             peer=("sdpa-*",), min_ratio=1.2) for mode in ("fwd", "fwd+bwd")),
    Target(4, "Swin-T stage 1 (B=64) fwd <= 0.10 ms (H100)", "window_attention", "fwd", r"Swin-T s1 B=64 ",
           max_ms=0.10),
    Target(4, "Swin-T stage 1 (B=64) fwd >= 12x FlexAttention", "window_attention", "fwd", r"Swin-T s1 B=64 ",
           peer=("flex",), min_ratio=12),
    Target(4, "Swin-T stage 1 (B=64) fwd >= 16x eager", "window_attention", "fwd", r"Swin-T s1 B=64 ",
           peer=("timm-eager",), min_ratio=16),
    Target(4, "Swin-T stage 1 (B=64) fwd+bwd >= 8x eager", "window_attention", "fwd+bwd", r"Swin-T s1 B=64 ",
           peer=("timm-eager",), min_ratio=8),
    Target(4, "every Swin-T stage fwd >= 5x FlexAttention", "window_attention", "fwd", r"^Swin-T ", peer=("flex",),
           min_ratio=5),
    Target(5, "ViT-B/16 B=256 with cls + pos <= 0.12 ms (H100)", "patch_embed", "fwd", r"ViT-B/16", max_ms=0.12),
    Target(5, "ViT-B/16 <= 1.5x the FLOP floor", "patch_embed", "fwd", r"ViT-B/16", min_pct_of_floor=100 / 1.5),
    Target(5, "ViT-B/16 >= 20x the timm-style path", "patch_embed", "fwd", r"ViT-B/16", peer=("torch",),
           min_ratio=20),
    Target(5, "ViT-B/16 >= 1.7x unfold + matmul under torch.compile", "patch_embed", "fwd", r"ViT-B/16",
           peer=("unfold+matmul torch.compile",), min_ratio=1.7),
    Target(5, "uint8 input >= 25x normalize-then-conv", "patch_embed_uint8", "fwd", r"ViT-B/16", peer=("torch",),
           min_ratio=25),
    Target(5, "backward (here fwd+bwd) >= 5x the Conv2d path", "patch_embed", "fwd+bwd", r"ViT-B/16",
           peer=("torch",), min_ratio=5),
    Target(6, "n=65536 fwd+bwd <= 40 ms (H100)", "clip_loss", "fwd+bwd", r"n=65536 ", max_ms=40),
    Target(6, "n=65536 fwd+bwd <= 1 GB extra memory", "clip_loss", "fwd+bwd", r"n=65536 ", max_extra_gb=1.0),
    Target(6, "n=65536 >= 17x less extra memory than torch.compile", "clip_loss", "fwd+bwd", r"n=65536 ",
           peer=("torch.compile",), min_memory_ratio=17),
    Target(6, "n=65536 less extra memory than Inf-CL", "clip_loss", "fwd+bwd", r"n=65536 ", peer=("inf-cl",),
           min_memory_ratio=1.0),
    Target(6, "n >= 32k at >= 80% of the bf16 matmul ceiling", "clip_loss", "fwd+bwd",
           r"n=(32768|65536|131072|262144) ", min_pct_of_floor=80),
    Target(6, "n=65536 >= 1.5x torch.compile", "clip_loss", "fwd+bwd", r"n=65536 ", peer=("torch.compile",),
           min_ratio=1.5),
    Target(6, "n=65536 >= 6x eager", "clip_loss", "fwd+bwd", r"n=65536 ", peer=("torch",), min_ratio=6),
    Target(6, "n=65536 >= 40x Inf-CL", "clip_loss", "fwd+bwd", r"n=65536 ", peer=("inf-cl",), min_ratio=40),
    Target(6, "n=262144 runs (on one 80 GB GPU)", "clip_loss", "fwd+bwd", r"n=262144 ", max_ms=float("inf")),
    *(Target(7, f"ViT-B/16 B=256 {mode} >= {ratio}x {peer}", "vit", mode, r"ViT-B/16 224px bs256", MODELS,
             (peer,), ratio) for mode in ("fwd", "train") for peer, ratio in (("timm", 1.3), ("timm+compile", 1.15))),
    Target(7, "CLIP ViT-B/16 256 images >= 1.3x HF", "clip_image", "fwd", r"CLIP ViT-B/16", MODELS, ("hf",), 1.3),
    Target(7, "CLIP 256 texts of 77 >= 1.3x HF", "clip_text", "fwd", r"CLIP ViT-B/16", MODELS, ("hf",), 1.3),
    Target(7, "CLIP ViT-L/14@336 tower B=32 >= 1.3x timm", "clip_image", "fwd", r"ViT-L/14 336px", MODELS,
           ("timm",), 1.3),
    Target(8, "Swin-T B=256 >= 2.0x timm eager", "swin", "fwd", r"Swin-T ", MODELS, ("timm",), 2.0),
    Target(8, "Swin-T B=256 >= 1.25x timm + torch.compile", "swin", "fwd", r"Swin-T ", MODELS, ("timm+compile",),
           1.25),
    Target(8, "Swin-B@384 B=32 >= 2x timm", "swin", "fwd", r"Swin-B@384", MODELS, ("timm",), 2.0),
    Target(8, "iGPT-S sampling 8 images <= 1.5 s", "igpt_sample", "fwd", ".",
           ("vtkernels+cuda_graph", "vtkernels+compile+cuda_graph", "vtkernels"), max_ms=1500),
    Target(8, "iGPT-S sampling >= 15x HF generate", "igpt_sample", "fwd", ".",
           ("vtkernels+cuda_graph", "vtkernels+compile+cuda_graph", "vtkernels"), ("hf",), 15),
    Target(8, "DETR-R50 B=8 >= 1.3x HF", "detr", "fwd", ".", MODELS, ("hf",), 1.3),
]


def _matches(provider: str, names: Sequence[str]) -> bool:
    return any(provider.startswith(n[:-1]) if n.endswith("*") else provider == n for n in names)


def _fastest(records: list[dict], names: Sequence[str]) -> Optional[dict]:
    timed = [r for r in records if r.get("median") and _matches(r["provider"], names)]
    return min(timed, key=lambda r: r["median"], default=None)


def _queued(record: dict) -> Optional[dict]:
    """The record as if its median were its queued (GPU-only) time, rates scaled to match; None
    without one."""
    queued = record.get("extra", {}).get("queued_ms")
    if not queued or not record.get("median"):
        return None
    speedup = record["median"] / queued
    return {**record, "median": queued,
            **{k: record[k] * speedup for k in ("tbps", "pct_of_floor") if record.get(k) is not None}}


def _fastest_queued(records: list[dict], names: Sequence[str]) -> Optional[dict]:
    return _fastest([q for q in map(_queued, records) if q is not None], names)


def _peak_extra_bytes(record: dict) -> Optional[float]:
    return record.get("extra", {}).get("memory", {}).get("peak_extra_bytes")


def _measure(target: Target, ours: dict, peer: Optional[dict]) -> tuple[str, Optional[bool]]:
    """(what was measured, met?) for one case; met None when the peer or the quantity is missing."""
    if target.min_ratio is not None:
        if peer is None:
            return "peer not measured", None
        ratio = peer["median"] / ours["median"]
        return f"{ratio:.2f}x {peer['provider']}", ratio >= target.min_ratio
    if target.min_memory_ratio is not None:
        theirs, mine = (None if r is None else _peak_extra_bytes(r) for r in (peer, ours))
        if not theirs or not mine:
            return "memory not measured", None
        return f"{theirs / mine:.1f}x less than {peer['provider']}", theirs / mine >= target.min_memory_ratio
    if target.max_ms is not None:
        return f"{ours['median']:.4g} ms", ours["median"] <= target.max_ms
    if target.min_tbps is not None:
        tbps = ours.get("tbps")
        return ("no TB/s", None) if tbps is None else (f"{tbps:.2f} TB/s", tbps >= target.min_tbps)
    if target.min_pct_of_floor is not None:
        pct = ours.get("pct_of_floor")
        return ("no floor", None) if pct is None else (f"{pct:.0f}% of the floor", pct >= target.min_pct_of_floor)
    peak = _peak_extra_bytes(ours)
    if peak is None:
        return "memory not measured", None
    return f"{peak / 1e9:.2f} GB", peak / 1e9 <= target.max_extra_gb


def evaluate(records: list[dict]) -> list[dict]:
    """One row per (target, matching case): the fastest of ours, what it reached, and met / missed /
    not measured. Records are results.json's (dicts)."""
    rows = []
    for target in TARGETS:
        cases = {}
        for r in records:
            if r["op"] == target.op and r["mode"] == target.mode and re.search(target.shape, r["shape"]):
                cases.setdefault(r["shape"], []).append(r)
        if not cases:
            rows.append({"target": target, "shape": "", "ours": "", "measured": "no case in this run", "met": None})
        for shape, group in cases.items():
            ours = _fastest(group, target.ours)
            if ours is None:  # our providers failed (missed) or did not run (not measured)
                errors = "; ".join(r["error"][:60] for r in group
                                   if _matches(r["provider"], target.ours) and r["error"])
                measured, met = (f"ours failed: {errors}", False) if errors else ("ours not measured", None)
            else:
                measured, met = _measure(target, ours, _fastest(group, target.peer))
            rows.append({"target": target, "shape": shape, "ours": ours["provider"] if ours else "",
                         "measured": measured, "met": met, "queued": _queued_verdict(target, group)})
    return rows


def _queued_verdict(target: Target, group: list[dict]) -> str:
    """The time target on GPU time alone ('' where it is not a time target or nothing was queued)."""
    if target.min_memory_ratio is not None or target.max_extra_gb is not None:
        return ""
    ours = _fastest_queued(group, target.ours)
    if ours is None:
        return ""
    measured, met = _measure(target, ours, _fastest_queued(group, target.peer))
    return f"{measured} ({'met' if met else 'missed' if met is False else 'not measured'})"


def markdown(records: list[dict], gpu: str) -> str:
    rows = evaluate(records)
    verdict = {True: "met", False: "**missed**", None: "not measured"}
    lines = [f"## Issue targets ({gpu}; the issues' absolute figures are H100's)", "",
             f"{sum(r['met'] is True for r in rows)} met, {sum(r['met'] is False for r in rows)} missed, "
             f"{sum(r['met'] is None for r in rows)} not measured.", "",
             "| issue | target | shape | ours (fastest) | measured | verdict | GPU time alone (queued) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| #{r['target'].issue} | {r['target'].claim} | {r['shape']} | {r['ours']} | {r['measured']} | "
                     f"{verdict[r['met']]} | {r.get('queued', '')} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> None:
    if len(argv) != 1:
        sys.exit("usage: python benchmarks/targets.py results.json")
    with open(argv[0]) as f:
        payload = json.load(f)
    print(markdown(payload["records"], payload["environment"].get("gpu", "")))


if __name__ == "__main__":
    main(sys.argv[1:])
