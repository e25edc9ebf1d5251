"""iGPT sampling: top-k / temperature sampling with a static KV cache, optionally a CUDA graph.

Every decode step has static shapes and no host sync (see :class:`vtkernels.models.igpt.KVCache`):

1. draw uniform noise into a preallocated (B, 512) buffer,
2. pick the next token by the Gumbel-max trick over the top-k logits: ``argmax(logits / T + g)``
   with ``g = -log(-log(u))`` restricted to the top k is an exact draw from
   ``softmax(top-k logits / T)``, and unlike ``torch.multinomial`` it never syncs,
3. write it into the sequence at the device-side position, run ``model.decode_step`` on it.

``cuda_graph=True`` captures step 1-3 once and replays it, so a 1024-token image costs 1023
graph launches. :func:`sample_without_cache` recomputes the whole prefix at every step with the
same noise draws: under the same seed it yields the same tokens (the test of the cache).
"""

from __future__ import annotations

from typing import Optional

import torch

UNIFORM_EPS = 1e-10


def top_k_gumbel(logits: torch.Tensor, uniform: torch.Tensor, top_k: Optional[int], temperature: float) -> torch.Tensor:
    """(B, V) logits and uniforms in [0, 1) -> (B,) sampled ids; ties at the k-th logit stay in."""
    scores = logits.float() / temperature
    if top_k is not None and top_k < scores.shape[-1]:
        kth = scores.topk(top_k, dim=-1).values[:, -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    gumbel = -torch.log(-torch.log(uniform.clamp(UNIFORM_EPS, 1.0 - UNIFORM_EPS)))
    return (scores + gumbel).argmax(-1)


def _start(model, batch: int, prompt: Optional[torch.Tensor], num_tokens: Optional[int], device):
    """The sequence buffer [SOS, prompt, room for the new tokens] and the prompt length P."""
    config = model.config
    total = config.n_positions if num_tokens is None else num_tokens
    if not 0 < total <= config.n_positions:
        raise ValueError(f"num_tokens must be in [1, {config.n_positions}], got {total}")
    device = device or model.wte.weight.device
    seq = torch.full((batch, 1 + total), config.sos_token, dtype=torch.long, device=device)
    n_prompt = 0
    if prompt is not None:
        n_prompt = prompt.shape[1]
        if prompt.shape[0] != batch or n_prompt >= total:
            raise ValueError(f"prompt must have shape ({batch}, P) with P < {total}, got {tuple(prompt.shape)}")
        seq[:, 1 : 1 + n_prompt] = prompt
    return seq, n_prompt, total


def _check(model, top_k, temperature):
    if model.lm_head is None:
        raise ValueError("sampling needs the LM head (build ImageGPT(head=True) / from ImageGPTForCausalImageModeling)")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1 or None, got {top_k}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


@torch.no_grad()
def sample(model, batch: int, *, num_tokens: Optional[int] = None, top_k: Optional[int] = 40,
           temperature: float = 1.0, prompt: Optional[torch.Tensor] = None,
           generator: Optional[torch.Generator] = None, cuda_graph: bool = False, compile_step: bool = False,
           device=None) -> torch.Tensor:
    """(B, num_tokens) colour ids: the prompt (if any) followed by sampled tokens.

    ``num_tokens`` defaults to ``n_positions`` (a whole image). ``cuda_graph`` needs a CUDA model
    and the default CUDA generator (``generator=None``; seed with ``torch.manual_seed``).
    ``compile_step`` runs the decode step through ``torch.compile(fullgraph=True)`` (Inductor fuses
    the element-wise work between the vtkernels ops: fewer kernels per step); the noise and
    the top-k draw stay eager, so the same seed gives the same tokens.
    """
    _check(model, top_k, temperature)
    seq, n_prompt, total = _start(model, batch, prompt, num_tokens, device)
    cache = model.new_cache(batch, device=seq.device)
    logits = model.prefill(seq[:, : 1 + n_prompt], cache)  # cache.pos = 1 + P
    uniform = torch.empty(batch, logits.shape[-1], device=seq.device)
    decode = torch.compile(model.decode_step, fullgraph=True, dynamic=False) if compile_step else model.decode_step

    def step():
        uniform.uniform_(generator=generator)
        token = top_k_gumbel(logits, uniform, top_k, temperature)
        seq.index_copy_(1, cache.pos, token[:, None])  # sequence index == cache position
        logits.copy_(decode(token, cache))

    n_steps = total - n_prompt - 1  # decode steps; the last token is sampled without one
    if cuda_graph and n_steps > 3:
        if seq.device.type != "cuda" or generator is not None:
            raise ValueError("cuda_graph=True needs a CUDA model and generator=None (the default CUDA generator)")
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up steps (real steps: they compile and autotune)
            for _ in range(2):
                step()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):  # recorded, not run
            step()
        for _ in range(n_steps - 2):
            graph.replay()
    else:
        for _ in range(n_steps):
            step()
    uniform.uniform_(generator=generator)
    seq[:, total] = top_k_gumbel(logits, uniform, top_k, temperature)
    return seq[:, 1:]


@torch.no_grad()
def sample_without_cache(model, batch: int, *, num_tokens: Optional[int] = None, top_k: Optional[int] = 40,
                         temperature: float = 1.0, prompt: Optional[torch.Tensor] = None,
                         generator: Optional[torch.Generator] = None, device=None) -> torch.Tensor:
    """As :func:`sample`, recomputing the whole prefix at every step (the slow reference)."""
    _check(model, top_k, temperature)
    seq, n_prompt, total = _start(model, batch, prompt, num_tokens, device)
    uniform = torch.empty(batch, model.config.n_colours, device=seq.device)
    for i in range(1 + n_prompt, 1 + total):
        logits = model(seq[:, :i])[:, -1]
        uniform.uniform_(generator=generator)
        seq[:, i] = top_k_gumbel(logits, uniform, top_k, temperature)
    return seq[:, 1:]
