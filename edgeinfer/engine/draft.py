"""Drafters for speculative decoding: cheap guesses of the next few tokens that the model then verifies.

``NgramDrafter`` (prompt lookup) finds the latest earlier occurrence of the last n tokens of the sequence
(prompt + output, n from ``n_max`` down to ``n_min``) and proposes the tokens that followed it: free on
code editing, summarising or RAG-style prompts where the answer copies spans of the prompt. ``ModelDrafter``
runs a small model with the same vocabulary autoregressively (here an early exit of the model itself,
``exit:K``: its first K layers and the output head). ``DraftLength`` adapts how many tokens to draft from the
acceptance seen so far (doubling while drafts are fully accepted), and stops drafting for a while when drafts
keep being rejected, so a workload that copies nothing runs at plain speed.

A drafter is per sequence; ``propose(history, k)`` returns a ``Draft`` (tokens, and for a sampling drafter
the distribution each token was drawn from, which the acceptance rule in ``engine.speculative`` needs).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import torch

    from edgeinfer.engine.sampling import Sampler


@dataclass(frozen=True)
class Draft:
    """Drafted tokens; ``probs`` ([len(tokens), vocab]) is the distribution each was drawn from, or ``None``
    for a deterministic drafter (a one-hot draft distribution)."""

    tokens: list[int]
    probs: torch.Tensor | None = None


class Drafter(Protocol):
    def propose(self, history: Sequence[int], k: int, sampler: Sampler) -> Draft:
        """Up to ``k`` tokens likely to follow ``history`` (all tokens so far, prompt included)."""
        ...

    def close(self) -> None: ...


class NgramDrafter:
    """Prompt lookup: the continuation of the latest earlier occurrence of the sequence's last n tokens.

    An index maps every n-gram (``n_min <= n <= n_max``) to the position after its latest occurrence; it is
    extended with the tokens appended since the previous call, so a proposal costs O(n_max + k).

    The draft is at most as long as the match's **depth**: how many tokens before the occurrence equal the
    tokens before the end of the sequence (at least n; counted up to k). A deep match means the answer is
    copying that span, so a long draft is likely accepted; a match of just n tokens is a guess worth a short
    draft (docs/speculative.md: on the code-editing prompts it halves the rejected positions per pass)."""

    def __init__(self, n_max: int = 4, n_min: int = 2):
        if not 1 <= n_min <= n_max:
            raise ValueError(f"need 1 <= n_min <= n_max, got n_min={n_min}, n_max={n_max}")
        self.n_max, self.n_min = n_max, n_min
        self._index: dict[tuple[int, ...], int] = {}
        self._seen: list[int] = []  # the tokens indexed so far (a prefix of the history)

    def _extend(self, history: Sequence[int]) -> None:
        seen = self._seen
        if len(history) < len(seen) or list(history[: len(seen)]) != seen:  # a new or rewritten sequence
            self._index.clear()
            seen.clear()
        index = self._index
        # an n-gram ending at position i-1 is indexed once the token at i (its continuation) is known
        for i in range(max(len(seen), 1), len(history)):
            for n in range(self.n_min, min(self.n_max, i) + 1):
                index[tuple(history[i - n : i])] = i
        seen.extend(history[len(seen) :])

    def propose(self, history: Sequence[int], k: int, sampler: Sampler | None = None) -> Draft:
        if k <= 0 or len(history) < self.n_min:
            return Draft([])
        self._extend(history)
        end = len(history)
        for n in range(min(self.n_max, end), self.n_min - 1, -1):
            start = self._index.get(tuple(history[end - n :]))
            if start is not None:
                depth = n  # history[start - n : start] == history[end - n :]; extend the match backwards
                while depth < k and depth < start and history[start - 1 - depth] == history[end - 1 - depth]:
                    depth += 1
                return Draft(list(history[start : start + min(k, depth)]))
        return Draft([])

    def close(self) -> None:
        self._index.clear()
        self._seen.clear()


class TokenModel(Protocol):
    """One sequence's KV cache on a model that scores several new positions in one pass."""

    @property
    def length(self) -> int:
        """Positions held in the KV cache."""
        ...

    def feed(self, ids: Sequence[int], all_logits: bool = False) -> torch.Tensor:
        """Append ``ids`` to the cache; logits [len(ids), vocab] with ``all_logits``, else [1, vocab] (the
        last position)."""
        ...

    def truncate(self, length: int) -> None:
        """Forget every position from ``length`` on (KV rollback)."""
        ...

    def close(self) -> None: ...


class ModelDrafter:
    """Autoregressive drafting with a small model of the same vocabulary (``open_sequence`` gives it one
    KV cache per sequence); its cache follows the history, rolled back where the history diverged."""

    def __init__(self, open_sequence: Callable[[], TokenModel]):
        self.model = open_sequence()
        self._fed: list[int] = []  # tokens in the draft model's cache

    def propose(self, history: Sequence[int], k: int, sampler: Sampler) -> Draft:
        import torch

        from edgeinfer.engine.speculative import target_probs

        if k <= 0:
            return Draft([])
        fed = self._fed
        common = 0
        for a, b in zip(fed, history, strict=False):
            if a != b:
                break
            common += 1
        if common == len(history):  # the cache must end before the history for a next-token distribution
            common -= 1
        if common < len(fed):
            self.model.truncate(common)
            del fed[common:]
        logits = self.model.feed(history[common:])[-1]
        fed.extend(history[common:])
        tokens: list[int] = []
        probs: list[torch.Tensor] = []
        for i in range(k):
            if sampler.params.greedy:
                token = int(torch.argmax(logits))
            else:
                q = target_probs(logits, sampler.params)
                token = int(torch.multinomial(q, 1, generator=sampler.generator))
                probs.append(q)
            tokens.append(token)
            if i < k - 1:
                logits = self.model.feed([token])[-1]
                fed.append(token)
        return Draft(tokens, torch.stack(probs) if probs else None)

    def close(self) -> None:
        self.model.close()


class DraftLength:
    """How many tokens to draft next: doubles after a fully accepted draft (a long copied span is reached in
    a few passes instead of one token more per pass), shrinks to what was accepted (plus one) otherwise;
    after ``patience`` drafts in a row with nothing accepted it stops drafting for a pause that doubles each
    time (up to ``max_pause`` steps), so plain decoding costs nothing extra.

    **Cost-aware**: ``record_pass`` feeds it the time of every pass. A drafted position costs ``c``
    one-position passes (learnt online: the extra time of a pass per drafted position ÷ the time of a
    one-position pass) and saves one pass when it is accepted, so drafting pays while the acceptance rate
    exceeds ``c``. Where it does not (a backend whose multi-position passes cost nearly one pass per
    position), it drafts only as a probe, after gaps of 1, 2, 4, ... ``max_pause`` plain steps, which keep
    both estimates fresh. Greedy decoding only (``engine.speculative``): a sampled stream depends on what was
    drafted, and a seed must give the same stream whatever the timing."""

    DECAY = 0.8  # weight of the history in the running estimates (acceptance, pass times)

    def __init__(self, k_max: int, patience: int = 2, max_pause: int = 64, cost_aware: bool = True):
        if k_max < 1:
            raise ValueError(f"the draft length must be at least 1, got {k_max}")
        self.k_max, self.patience, self.max_pause = k_max, patience, max_pause
        self.cost_aware = cost_aware
        self.k = k_max
        self._misses = 0
        self._pause = 0
        self._next_pause = 1
        self._drafted = self._accepted = 0.0  # decayed sums
        self._one: float | None = None  # running seconds of a one-position pass
        self._extra: float | None = None  # running extra seconds per drafted position
        self._probe_wait = 0
        self._probe_gap = 0
        self._extra_pending = False  # a multi-position pass was timed before any one-position pass

    @property
    def position_cost(self) -> float | None:
        """A drafted position's cost in one-position passes (``None`` until both kinds of pass were timed)."""
        if self._one is None or self._extra is None or self._one <= 0:
            return None
        return max(0.0, self._extra / self._one)

    @property
    def acceptance(self) -> float | None:
        return self._accepted / self._drafted if self._drafted > 0 else None

    def pays(self) -> bool:
        """Whether a drafted position is expected to save more than it costs (``True`` until measured)."""
        c, a = self.position_cost, self.acceptance
        return not self.cost_aware or c is None or a is None or a > c

    def next(self) -> int:
        if self._pause > 0:
            self._pause -= 1
            return 0
        if self.cost_aware and self._one is None and self._extra_pending:  # time a one-position pass once
            self._extra_pending = False
            return 0
        if self.pays():
            self._probe_gap = 0
            return self.k
        if self._probe_wait > 0:
            self._probe_wait -= 1
            return 0
        self._probe_gap = min(self.max_pause, max(1, 2 * self._probe_gap))
        self._probe_wait = self._probe_gap
        return self.k  # a probe

    def record_pass(self, positions: int, seconds: float) -> None:
        """The wall time of a pass that verified ``positions`` positions (1: a plain step)."""
        d = self.DECAY
        if positions <= 1:
            self._one = seconds if self._one is None else d * self._one + (1 - d) * seconds
        elif self._one is None:
            self._extra_pending = True
        else:
            extra = (seconds - self._one) / (positions - 1)
            self._extra = extra if self._extra is None else d * self._extra + (1 - d) * extra

    def update(self, drafted: int, accepted: int) -> None:
        if drafted == 0:
            return
        self._drafted = self.DECAY * self._drafted + drafted
        self._accepted = self.DECAY * self._accepted + accepted
        if accepted == drafted:
            self.k = min(self.k_max, 2 * max(self.k, drafted))
        else:
            self.k = max(1, accepted + 1)
        if accepted > 0:
            self._misses = 0
            self._next_pause = 1
            return
        self._misses += 1
        if self._misses >= self.patience:
            self._pause = self._next_pause
            self._next_pause = min(self.max_pause, 2 * self._next_pause)
            self._misses = 0
