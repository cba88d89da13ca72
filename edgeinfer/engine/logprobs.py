"""Log probabilities of sampled tokens (OpenAI's ``logprobs`` / ``top_logprobs``), one home for every backend.

A backend asked for them (``SamplingParams.logprobs`` is not None) yields a ``TokenLogprobs`` instead of a
bare token id: the sampled token, its log probability and the ``k`` most likely alternatives. The values are
the log-softmax of the model's raw logits at that position -- temperature 1, before top-k / top-p -- as vLLM
and OpenAI report them, so they describe the model, not the sampling settings. ``engine.generate`` attaches
each token's bytes and hands them to the API on the ``Delta`` the token's text is in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

MAX_TOP = 20  # OpenAI's upper bound for chat top_logprobs (completions allow up to 5)


@dataclass(frozen=True)
class TopLogprob:
    token_id: int
    logprob: float
    bytes: bytes = b""  # filled in by ``engine.generate`` (a backend need not know the text)


@dataclass(frozen=True)
class TokenLogprobs:
    """One sampled token with its log probability and the ``top`` most likely tokens, best first."""

    token_id: int
    logprob: float
    top: tuple[TopLogprob, ...] = ()
    bytes: bytes = b""


def token_logprobs(logits: torch.Tensor, token: int, k: int) -> TokenLogprobs:
    """``TokenLogprobs`` of ``token`` from one position's raw logits ([vocab]) with its ``k`` best tokens."""
    import torch

    if logits.dim() != 1:
        raise ValueError(f"expected logits of one position [vocab], got shape {tuple(logits.shape)}")
    lp = torch.log_softmax(logits.float(), dim=-1)
    top: tuple[TopLogprob, ...] = ()
    if k > 0:
        values, ids = torch.topk(lp, min(k, lp.numel()))
        top = tuple(TopLogprob(int(i), float(v)) for i, v in zip(ids.tolist(), values.tolist(), strict=True))
    return TokenLogprobs(int(token), float(lp[token]), top)


def token_id(item: int | TokenLogprobs) -> int:
    """The token id of what a backend yielded, with or without logprobs."""
    return item.token_id if isinstance(item, TokenLogprobs) else item
