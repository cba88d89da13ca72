"""Logits -> next token: greedy, or temperature / top-k / top-p sampling from a seeded generator.

Shared by the in-process shard chain and the cluster gateway, so both draw the same tokens for the same
logits and seed.
"""

from __future__ import annotations

import torch

from edgeinfer.engine.base import SamplingParams


def filter_logits(
    logits: torch.Tensor, temperature: float, top_k: int = 0, top_p: float = 1.0
) -> torch.Tensor:
    """Temperature-scaled logits with everything outside top-k / the top-p nucleus set to -inf."""
    if temperature <= 0:
        raise ValueError("temperature must be > 0 for sampling (use greedy for 0)")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must lie in (0, 1], got {top_p}")
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0, got {top_k}")
    x = logits.float() / temperature
    if 0 < top_k < x.numel():
        kth = torch.topk(x, top_k).values[-1]
        x = x.masked_fill(x < kth, float("-inf"))
    if top_p < 1.0:
        sorted_x, order = torch.sort(x, descending=True)
        probs = torch.softmax(sorted_x, dim=-1)
        before = torch.cumsum(probs, dim=-1) - probs  # mass of strictly better tokens
        drop = before >= top_p  # keep the smallest prefix whose mass reaches top_p (always the best token)
        x = x.clone()
        x[order[drop]] = float("-inf")
    return x


class Sampler:
    """Draws tokens for one generation; ``seed=None`` seeds from the OS."""

    def __init__(self, params: SamplingParams):
        self.params = params
        self.generator = torch.Generator()
        if params.seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(int(params.seed) & 0xFFFF_FFFF_FFFF_FFFF)

    def __call__(self, logits: torch.Tensor) -> int:
        if logits.dim() != 1:
            raise ValueError(f"expected logits of one position [vocab], got shape {tuple(logits.shape)}")
        p = self.params
        if p.greedy:
            return int(torch.argmax(logits))
        probs = torch.softmax(filter_logits(logits, p.temperature, p.top_k, p.top_p), dim=-1)
        return int(torch.multinomial(probs, 1, generator=self.generator))
