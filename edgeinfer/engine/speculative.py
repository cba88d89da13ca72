"""Speculative decoding: a drafter guesses k tokens, the model verifies them in ONE forward pass of k+1
positions, the accepted ones are kept and the KV cache is rolled back over the rest.

The loop (``speculative_tokens``) works on any ``TokenModel`` (engine/draft.py): one sequence's KV cache
that can score several new positions at once and be truncated. A backend that offers ``open_sequence()``
returning one (``Speculative``) can be wrapped in ``SpeculativeDecoder``, which is itself a ``Backend``:
``engine.generate`` receives token ids exactly as from plain decoding.

Exactness: greedy output is the model's own argmax at every position, so it is token-identical to plain
decoding (up to the floating-point differences of a multi-position pass). Sampling uses the standard
speculative-sampling rule (``accept``): a drafted token t is kept with probability min(1, p(t)/q(t)), and on
rejection a token is drawn from norm(max(0, p - q)); a deterministic drafter (n-gram) has a one-hot q. The
distribution of the output is then exactly the model's (temperature / top-k / top-p as ``engine.sampling``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from edgeinfer.engine.base import ModelInfo, SamplingParams
from edgeinfer.engine.draft import Draft, Drafter, DraftLength, ModelDrafter, NgramDrafter, TokenModel
from edgeinfer.engine.logprobs import TokenLogprobs, token_logprobs

if TYPE_CHECKING:  # torch is imported on first use: the options are read by the CLI before any model loads
    import torch

    from edgeinfer.engine.base import Backend
    from edgeinfer.engine.sampling import Sampler

DEFAULT_DRAFT_MAX = 8


@dataclass(frozen=True)
class SpeculativeOptions:
    """``mode``: off, ngram or exit (self-speculation with the model's first ``exit_layer`` layers);
    ``cost_aware``: stop drafting where a drafted position costs more than it saves (``DraftLength``; off in
    tests that need drafts whatever the machine)."""

    mode: str = "off"
    exit_layer: int | None = None
    draft_max: int = DEFAULT_DRAFT_MAX
    cost_aware: bool = True

    def __post_init__(self) -> None:
        if self.mode not in ("off", "ngram", "exit"):
            raise ValueError(f"unknown speculative mode {self.mode!r}; choose off, ngram or exit:K")
        if (self.mode == "exit") != (self.exit_layer is not None):
            raise ValueError("exit:K needs a layer K (and only exit takes one)")
        if self.exit_layer is not None and self.exit_layer < 1:
            raise ValueError(f"exit:K needs K >= 1, got {self.exit_layer}")
        if not 1 <= self.draft_max <= 64:
            raise ValueError(f"--draft-max must lie in [1, 64], got {self.draft_max}")

    @classmethod
    def parse(cls, value: str, draft_max: int = DEFAULT_DRAFT_MAX) -> SpeculativeOptions:
        """``off``, ``ngram`` or ``exit:K``."""
        value = value.strip().lower()
        if value.startswith("exit:"):
            try:
                layer = int(value[5:])
            except ValueError:
                raise ValueError(f"--speculative exit:K needs an integer K, got {value!r}") from None
            return cls("exit", layer, draft_max)
        if value in ("off", "ngram"):
            return cls(value, None, draft_max)
        raise ValueError(f"unknown --speculative {value!r}; choose off, ngram or exit:K")

    @property
    def enabled(self) -> bool:
        return self.mode != "off"

    def __str__(self) -> str:
        return f"exit:{self.exit_layer}" if self.mode == "exit" else self.mode


@dataclass
class SpecStats:
    """Counters over every sequence decoded speculatively (a verification pass = one forward pass)."""

    passes: int = 0  # forward passes after the prompt (verification passes and plain single-token steps)
    drafted: int = 0  # tokens proposed by the drafter
    accepted: int = 0  # drafted tokens the model accepted
    emitted: int = 0  # tokens produced (accepted + one per pass)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def record(self, drafted: int, accepted: int, emitted: int) -> None:
        with self._lock:
            self.passes += 1
            self.drafted += drafted
            self.accepted += accepted
            self.emitted += emitted

    @property
    def acceptance_rate(self) -> float:
        """Accepted / drafted tokens (0 before any draft)."""
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def tokens_per_pass(self) -> float:
        """Tokens produced per forward pass (1.0 is plain decoding)."""
        return self.emitted / self.passes if self.passes else 0.0

    def snapshot(self) -> SpecStats:
        with self._lock:
            return SpecStats(self.passes, self.drafted, self.accepted, self.emitted)

    def since(self, before: SpecStats) -> SpecStats:
        now = self.snapshot()
        return SpecStats(
            now.passes - before.passes,
            now.drafted - before.drafted,
            now.accepted - before.accepted,
            now.emitted - before.emitted,
        )


def target_probs(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """The distribution ``Sampler`` draws from for these logits (temperature, top-k, top-p)."""
    import torch

    from edgeinfer.engine.sampling import filter_logits

    return torch.softmax(filter_logits(logits, params.temperature, params.top_k, params.top_p), dim=-1)


def accept(logits: torch.Tensor, draft: Draft, sampler: Sampler) -> list[int]:
    """The tokens one verification pass yields: the accepted prefix of ``draft.tokens`` and one more (the
    correction at the first rejection, or the bonus token after a fully accepted draft).

    ``logits`` [len(draft)+1, vocab]: row i is the model's next-token logits after the i-th position of the
    pass (the last committed token, then the drafted ones). Greedy: a drafted token is accepted when it is the
    argmax. Sampling: the speculative-sampling rule against ``sampler``'s distribution and generator."""
    import torch

    tokens = draft.tokens
    if logits.shape[0] != len(tokens) + 1:
        raise ValueError(f"need {len(tokens) + 1} logits rows for {len(tokens)} drafted tokens")
    params = sampler.params
    if params.greedy:
        best = torch.argmax(logits, dim=-1).tolist()
        out: list[int] = []
        for i, t in enumerate(tokens):
            out.append(best[i])
            if best[i] != t:
                return out
        out.append(best[len(tokens)])
        return out
    g = sampler.generator
    out = []
    for i, t in enumerate(tokens):
        p = target_probs(logits[i], params)
        q_t = 1.0 if draft.probs is None else float(draft.probs[i, t])
        p_t = float(p[t])
        if q_t > 0 and float(torch.rand((), generator=g)) * q_t < p_t:  # u < min(1, p/q)
            out.append(t)
            continue
        if draft.probs is None:
            residual = p.clone()
            residual[t] = 0.0
        else:
            residual = (p - draft.probs[i]).clamp_min(0.0)
        if float(residual.sum()) <= 0.0:  # p == q: nothing to correct (unreachable after a rejection)
            residual = p
        out.append(int(torch.multinomial(residual, 1, generator=g)))
        return out
    out.append(int(torch.multinomial(target_probs(logits[len(tokens)], params), 1, generator=g)))
    return out


def speculative_tokens(
    model: TokenModel,
    drafter: Drafter,
    prompt: Sequence[int],
    params: SamplingParams,
    draft_max: int,
    n_ctx: int,
    stats: SpecStats | None = None,
    cost_aware: bool = True,
) -> Iterator[int | TokenLogprobs]:
    """Yield sampled token ids (``TokenLogprobs`` when ``params.logprobs`` is set) until the caller stops or
    the context is full, drafting and verifying.

    Invariant: the KV cache holds every token of ``history`` but the last (``pending``), which is fed first
    in the next pass together with the drafted tokens."""
    from edgeinfer.engine.sampling import Sampler

    if not prompt:
        raise ValueError("the prompt must contain at least one token")
    sampler = Sampler(params)
    # sampled output depends on which tokens were drafted (the acceptance rule draws per drafted token), so a
    # timing-dependent draft length would make seeded streams irreproducible: cost-aware only when greedy
    length = DraftLength(draft_max, cost_aware=cost_aware and params.greedy)
    history = list(prompt)
    if len(history) > 1:
        model.feed(history[:-1])
    while len(history) < n_ctx:
        k = min(length.next(), n_ctx - len(history) - 1)
        draft = drafter.propose(history, k, sampler) if k > 0 else Draft([])
        t0 = time.perf_counter()
        logits = model.feed([history[-1], *draft.tokens], all_logits=bool(draft.tokens))
        length.record_pass(len(draft.tokens) + 1, time.perf_counter() - t0)  # the cost-aware draft length
        out = accept(logits, draft, sampler)
        n_acc = len(out) - 1
        if n_acc < len(draft.tokens):
            model.truncate(len(history) + n_acc)  # roll back the rejected drafted tokens
        length.update(len(draft.tokens), n_acc)
        if stats is not None:
            stats.record(len(draft.tokens), n_acc, len(out))
        for i, token in enumerate(out):
            history.append(token)
            yield token if params.logprobs is None else token_logprobs(logits[i], token, params.logprobs)


@runtime_checkable
class ReportsSpeculation(Protocol):
    """A backend that decodes speculatively and counts it (``/metrics``, ``generate``'s summary)."""

    spec_stats: SpecStats


@runtime_checkable
class Speculative(Protocol):
    """A backend whose sequences can be verified several positions at a time (and rolled back)."""

    info: ModelInfo

    def open_sequence(self) -> TokenModel: ...


class SpeculativeDecoder:
    """A ``Backend`` that decodes ``target`` speculatively; everything else is the target's.

    ``draft_model`` (``exit`` mode) opens one sequence on the draft model per request."""

    def __init__(
        self,
        target: Backend,
        options: SpeculativeOptions,
        draft_model: Callable[[], TokenModel] | None = None,
        close_draft: Callable[[], None] | None = None,
    ):
        if not isinstance(target, Speculative):
            raise ValueError(
                f"the {target.info.backend} backend here cannot verify drafted tokens (no open_sequence)"
            )
        if not options.enabled:
            raise ValueError("SpeculativeDecoder needs a speculative mode other than off")
        if options.mode == "exit" and draft_model is None:
            raise ValueError("exit:K needs a draft model")
        self.target = target
        self.options = options
        self.info = target.info
        self.spec_stats = SpecStats()
        self._draft_model = draft_model
        self._close_draft = close_draft

    def tokenize(self, text: str, add_bos: bool = True, special: bool = True) -> list[int]:
        return self.target.tokenize(text, add_bos=add_bos, special=special)

    def token_bytes(self, ids: Sequence[int]) -> bytes:
        return self.target.token_bytes(ids)

    def is_eog(self, token_id: int) -> bool:
        return self.target.is_eog(token_id)

    def drafter(self) -> Drafter:
        if self._draft_model is not None:
            return ModelDrafter(self._draft_model)
        return NgramDrafter()

    def generate_tokens(self, prompt: Sequence[int], params: SamplingParams) -> Iterator[int | TokenLogprobs]:
        if not prompt:
            raise ValueError("the prompt must contain at least one token")
        if len(prompt) >= self.info.n_ctx:
            raise ValueError(f"prompt of {len(prompt)} tokens does not fit the context of {self.info.n_ctx}")
        return self._generate(list(prompt), params)

    def _generate(self, prompt: list[int], params: SamplingParams) -> Iterator[int | TokenLogprobs]:
        assert isinstance(self.target, Speculative)
        model = self.target.open_sequence()
        drafter = self.drafter()
        try:
            yield from speculative_tokens(
                model,
                drafter,
                prompt,
                params,
                self.options.draft_max,
                self.info.n_ctx,
                self.spec_stats,
                self.options.cost_aware,
            )
        finally:
            drafter.close()
            model.close()

    def close(self) -> None:
        if self._close_draft is not None:
            self._close_draft()
        self.target.close()
