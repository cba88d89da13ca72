"""The token loop of every backend that computes logits itself (the in-process shard chain, the cluster
gateway): run the prompt through the model, sample, feed the token back, one position at a time.

``forward(ids, start_pos)`` runs new token ids at positions ``start_pos...`` and returns the logits of the
last position ([vocab]), or the token id itself when the model already picked it (the gateway asks the last
node for its greedy top-1 rather than for the whole logits vector).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

from edgeinfer.engine.base import SamplingParams
from edgeinfer.engine.logprobs import TokenLogprobs, token_logprobs
from edgeinfer.engine.sampling import Sampler

if TYPE_CHECKING:
    import torch

Forward = Callable[[list[int], int], "torch.Tensor | int"]


def decode_tokens(
    forward: Forward, prompt: Sequence[int], params: SamplingParams, max_positions: int | None = None
) -> Iterator[int | TokenLogprobs]:
    """Yield sampled token ids until the caller stops, or until ``max_positions`` positions are filled;
    ``TokenLogprobs`` instead when ``params.logprobs`` is set (``forward`` must then return logits)."""
    sampler = Sampler(params)
    ids, pos = list(prompt), 0
    while True:
        out = forward(ids, pos)
        pos += len(ids)
        token = out if isinstance(out, int) else sampler(out)
        if params.logprobs is not None and not isinstance(out, int):
            yield token_logprobs(out, token, params.logprobs)
        else:
            yield token
        if max_positions is not None and pos >= max_positions:
            return
        ids = [token]
