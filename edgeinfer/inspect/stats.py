"""Sequential verdicts for inspection: Wald's sequential probability ratio test on Bernoulli streams.

Two questions reduce to one test on a stream of yes/no observations:

* **model** — each ID check either passes or fails. An honest service fails a check with probability at most
  ``eps`` (benign nondeterminism; IDs are chosen so this is ~1e-4 or less); a substituting service fails it
  with probability at least ``q`` (``q`` = per-ID detection probability x fraction of traffic substituted).
  H0: p = eps ("matches") against H1: p = q ("substituted").
* **sla** — each real request either meets the latency SLO or violates it. The SLA "at least a fraction
  ``level`` of requests meet the SLO" is H0: p = 1 - level (e.g. 0.001 for 99.9 %); it is judged violated at
  H1: p = ``violated`` (e.g. 0.01). Rates between the two are the indifference region: either answer is
  acceptable there, and the test needs more observations the closer the true rate is to its middle.

Wald's test adds log(p1/p0) per failure and log((1-p1)/(1-p0)) per pass, and stops at
log((1-beta)/alpha) (H1) or log(beta/(1-alpha)) (H0): P(decide H1 | H0) <= ~alpha and P(decide H0 | H1)
<= ~beta. The reported confidence is anytime-valid (Ville's inequality: the likelihood ratio is a
martingale under H0, its inverse under H1): deciding H1 at ratio LR, the chance that an H0 stream ever
reached LR is at most 1/LR, so confidence = 1 - 1/LR; deciding H0, confidence = 1 - LR.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable
from dataclasses import dataclass


class Decision(enum.StrEnum):
    MATCHES = "matches"
    SUBSTITUTED = "substituted"
    MET = "met"
    VIOLATED = "violated"
    UNDECIDED = "undecided"


@dataclass(frozen=True)
class Verdict:
    """Where a sequential test stands after ``n`` observations, ``failures`` of them failed (or violated)."""

    test: str  # "model" or "sla"
    decision: Decision
    confidence: float  # anytime-valid 1 - P(this much evidence | the other hypothesis); 0.0 while undecided
    n: int  # observations used (the one that decided included)
    failures: int
    llr: float  # log likelihood ratio log(P(data | H1) / P(data | H0))
    alpha: float
    beta: float

    @property
    def decided(self) -> bool:
        return self.decision is not Decision.UNDECIDED

    def to_dict(self) -> dict[str, object]:
        return {
            "test": self.test,
            "decision": self.decision.value,
            "confidence": self.confidence,
            "n": self.n,
            "failures": self.failures,
            "llr": self.llr,
            "alpha": self.alpha,
            "beta": self.beta,
        }


def _check_prob(name: str, value: float) -> None:
    if not 0.0 < value < 1.0:
        raise ValueError(f"{name} must be strictly between 0 and 1, got {value!r}")


class SPRT:
    """Wald's SPRT of H0: p = p0 against H1: p = p1 (p0 < p1) on a stream of Bernoulli failures.

    ``update(failed)`` feeds one observation and returns the verdict; once decided the verdict is final and
    later observations are ignored (``reset()`` starts a new test). ``max_n`` truncates the test: if neither
    boundary is crossed by then, the verdict stays undecided.
    """

    def __init__(
        self,
        p0: float,
        p1: float,
        *,
        alpha: float = 1e-3,
        beta: float = 1e-3,
        test: str = "sprt",
        accept0: Decision = Decision.MATCHES,
        accept1: Decision = Decision.SUBSTITUTED,
        max_n: int | None = None,
    ) -> None:
        for name, value in (("p0", p0), ("p1", p1), ("alpha", alpha), ("beta", beta)):
            _check_prob(name, value)
        if not p0 < p1:
            raise ValueError(f"p0 ({p0}) must be below p1 ({p1}): p1 is the failure rate to detect")
        if alpha + beta >= 1.0:
            raise ValueError(f"alpha + beta must be below 1, got {alpha} + {beta}")
        if max_n is not None and max_n < 1:
            raise ValueError(f"max_n must be at least 1, got {max_n}")
        self.p0, self.p1, self.alpha, self.beta = p0, p1, alpha, beta
        self.test, self.accept0, self.accept1, self.max_n = test, accept0, accept1, max_n
        self.step_fail = math.log(p1 / p0)
        self.step_pass = math.log((1.0 - p1) / (1.0 - p0))
        self.upper = math.log((1.0 - beta) / alpha)
        self.lower = math.log(beta / (1.0 - alpha))
        self.reset()

    def reset(self) -> None:
        self.n = 0
        self.failures = 0
        self.llr = 0.0
        self._decision = Decision.UNDECIDED

    def update(self, failed: bool) -> Verdict:
        if self._decision is Decision.UNDECIDED and (self.max_n is None or self.n < self.max_n):
            self.n += 1
            if failed:
                self.failures += 1
                self.llr += self.step_fail
            else:
                self.llr += self.step_pass
            if self.llr >= self.upper:
                self._decision = self.accept1
            elif self.llr <= self.lower:
                self._decision = self.accept0
        return self.verdict

    def extend(self, observations: Iterable[bool]) -> Verdict:
        """Feed observations until the test decides (the rest are not consumed past the deciding one)."""
        for failed in observations:
            if self.update(bool(failed)).decided:
                break
        return self.verdict

    @property
    def verdict(self) -> Verdict:
        if self._decision is self.accept1:
            confidence = 1.0 - math.exp(-self.llr)
        elif self._decision is self.accept0:
            confidence = 1.0 - math.exp(self.llr)
        else:
            confidence = 0.0
        return Verdict(
            self.test, self._decision, confidence, self.n, self.failures, self.llr, self.alpha, self.beta
        )

    def expected_n(self, p: float) -> float:
        """Wald's approximation of the mean number of observations to a decision at a true rate ``p``."""
        _check_prob("p", p)
        drift = p * self.step_fail + (1.0 - p) * self.step_pass
        if abs(drift) < 1e-12:
            return max(
                1.0, -self.lower * self.upper / (p * self.step_fail**2 + (1.0 - p) * self.step_pass**2)
            )
        h = _oc_exponent(p, self.p0, self.p1)
        a, b = self.upper, self.lower
        # the operating characteristic: the probability of ending at the lower boundary (accepting H0)
        # (e^ha - 1) / (e^ha - e^hb), rearranged so that no exponent is positive
        if h > 0:
            accept0 = (1.0 - math.exp(-h * a)) / (1.0 - math.exp(h * (b - a)))
        else:
            accept0 = (math.exp(h * (a - b)) - math.exp(-h * b)) / (math.exp(h * (a - b)) - 1.0)
        # Wald's formula ignores the overshoot past a boundary: at least one observation is always needed
        return max(1.0, (accept0 * b + (1.0 - accept0) * a) / drift)

    def failures_to_decide(self) -> int:
        """Failures in a row that decide H1 from a fresh start (1 = one failed ID check is proof enough)."""
        return math.ceil(self.upper / self.step_fail - 1e-12)

    def passes_to_decide(self) -> int:
        """Passes in a row that decide H0 from a fresh start."""
        return math.ceil(self.lower / self.step_pass - 1e-12)


def _oc_exponent(p: float, p0: float, p1: float) -> float:
    """The non-zero h with p (p1/p0)^h + (1-p) ((1-p1)/(1-p0))^h = 1 (Wald's operating characteristic)."""
    r1, r0 = p1 / p0, (1.0 - p1) / (1.0 - p0)

    def f(h: float) -> float:
        return p * r1**h + (1.0 - p) * r0**h - 1.0

    # h > 0 when p is below the rate of zero drift (H0 side), h < 0 above it; bracket and bisect
    drift = p * math.log(r1) + (1.0 - p) * math.log(r0)
    lo, hi = (1e-9, 1.0) if drift < 0 else (-1.0, -1e-9)
    while f(hi if drift < 0 else lo) < 0:
        if drift < 0:
            hi *= 2.0
        else:
            lo *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        # f is convex with roots at 0 and h: between them it is negative
        if (f(mid) < 0) == (drift < 0):
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def model_test(
    q: float = 0.01, *, eps: float = 1e-4, alpha: float = 1e-3, beta: float = 1e-3, max_n: int | None = None
) -> SPRT:
    """ "Model matches vs substituted" on ID checks (``update(failed=True)`` for a failed check).

    ``q``: the smallest per-check failure probability to catch (per-ID detection x substituted fraction;
    0.01 catches 1 % substitution of a model every ID exposes); ``eps``: the largest an honest service shows.
    """
    if not eps < q:
        raise ValueError(f"eps ({eps}) must be below q ({q}): an honest service fails less often than a fake")
    return SPRT(
        eps,
        q,
        alpha=alpha,
        beta=beta,
        test="model",
        accept0=Decision.MATCHES,
        accept1=Decision.SUBSTITUTED,
        max_n=max_n,
    )


def sla_test(
    level: float = 0.999,
    violated: float = 0.01,
    *,
    alpha: float = 1e-3,
    beta: float = 1e-3,
    max_n: int | None = None,
) -> SPRT:
    """ "SLA met vs violated" on real requests (``update(failed=True)`` for a request that missed its SLO).

    H0: the violation rate is ``1 - level`` (the SLA promise); H1: it is ``violated``. The interval between
    is the indifference region.
    """
    _check_prob("level", level)
    if not 1.0 - level < violated:
        raise ValueError(
            f"violated ({violated}) must exceed the rate the SLA allows (1 - level = {1.0 - level:g})"
        )
    return SPRT(
        1.0 - level,
        violated,
        alpha=alpha,
        beta=beta,
        test="sla",
        accept0=Decision.MET,
        accept1=Decision.VIOLATED,
        max_n=max_n,
    )
