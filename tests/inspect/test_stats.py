"""Sequential tests of edgeinfer.inspect.stats: known answers and error rates measured on seeded streams."""

from __future__ import annotations

import json
import math
import random

import pytest

from edgeinfer.inspect.stats import SPRT, Decision, Verdict, model_test, sla_test


def _run(test: SPRT, rate: float, rng: random.Random, limit: int = 1_000_000) -> Verdict:
    test.reset()
    for _ in range(limit):
        if test.update(rng.random() < rate).decided:
            break
    return test.verdict


def _error_rate(test: SPRT, rate: float, wrong: Decision, runs: int, seed: int) -> tuple[float, float]:
    """(fraction of runs ending in ``wrong``, mean observations to a decision)."""
    rng = random.Random(seed)
    verdicts = [_run(test, rate, rng) for _ in range(runs)]
    assert all(v.decided for v in verdicts)
    return sum(v.decision is wrong for v in verdicts) / runs, sum(v.n for v in verdicts) / runs


def test_one_failed_check_proves_full_substitution():
    # a substitute every ID catches with >= 99.9 %: one failed check is more evidence than alpha allows
    test = model_test(q=0.999, eps=1e-4, alpha=1e-3, beta=1e-3)
    assert test.failures_to_decide() == 1
    verdict = test.update(True)
    assert verdict.decision is Decision.SUBSTITUTED
    assert verdict.n == 1 and verdict.failures == 1
    assert verdict.confidence >= 1 - 1e-3
    assert math.isclose(verdict.llr, math.log(0.999 / 1e-4))


def test_known_boundaries_for_one_percent_substitution():
    test = model_test(q=0.01, eps=1e-4, alpha=1e-3, beta=1e-3)
    # log(999) / log(100) = 1.5: two failures; log(999) / -log(0.99 / 0.9999) = 694.3 passes
    assert test.failures_to_decide() == 2
    assert test.passes_to_decide() == 695
    assert not test.update(True).decided  # one failure is not proof: eps allows rare benign ones
    test.reset()
    verdict = test.extend([False] * 1000)
    assert verdict.decision is Decision.MATCHES and verdict.n == 695  # stops at the deciding observation
    assert verdict.confidence >= 1 - 1e-3 / (1 - 1e-3)


def test_verdict_is_final_until_reset():
    test = model_test(q=0.5, eps=1e-3, alpha=0.01, beta=0.01)
    first = test.extend([True] * 3)
    assert first.decision is Decision.SUBSTITUTED
    assert test.update(False) == first and test.update(True) == first
    test.reset()
    assert test.verdict.decision is Decision.UNDECIDED and test.verdict.n == 0
    assert test.verdict.confidence == 0.0


def test_truncated_test_stays_undecided():
    test = sla_test(0.999, 0.01, max_n=50)
    verdict = test.extend([False] * 100)
    assert verdict.decision is Decision.UNDECIDED and verdict.n == 50


def test_verdict_serialises():
    verdict = sla_test().extend([True] * 5)
    assert verdict.decision is Decision.VIOLATED and verdict.test == "sla"
    data = json.loads(json.dumps(verdict.to_dict()))
    assert (
        data["decision"] == "violated" and data["n"] == 3 and data["failures"] == 3
    )  # log(10) x 3 > log(999)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: SPRT(0.2, 0.1), "below p1"),
        (lambda: SPRT(0.0, 0.1), "p0 must be strictly"),
        (lambda: SPRT(0.1, 0.2, alpha=0.6, beta=0.5), "alpha \\+ beta"),
        (lambda: SPRT(0.1, 0.2, max_n=0), "max_n"),
        (lambda: model_test(q=1e-4, eps=1e-3), "eps"),
        (lambda: sla_test(0.99, 0.005), "violated"),
        (lambda: sla_test(1.0, 0.01), "level"),
    ],
)
def test_bad_parameters_are_clear_errors(make, message):
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.parametrize(("alpha", "beta"), [(0.05, 0.05), (0.01, 0.1)])
def test_error_rates_within_alpha_beta(alpha, beta):
    # rates far enough from 0 that alpha/beta errors happen often enough to measure in a few thousand runs
    test = SPRT(0.05, 0.15, alpha=alpha, beta=beta)
    runs = 3000
    false_alarm, n0 = _error_rate(test, 0.05, Decision.SUBSTITUTED, runs, seed=1)
    miss, n1 = _error_rate(test, 0.15, Decision.MATCHES, runs, seed=2)
    # Wald: the real error rates are at most alpha / (1 - beta) and beta / (1 - alpha); 3 sigma of sampling
    assert false_alarm <= alpha / (1 - beta) + 3 * math.sqrt(alpha / runs)
    assert miss <= beta / (1 - alpha) + 3 * math.sqrt(beta / runs)
    # the test is not trivially conservative either: some errors do occur at these alphas
    assert false_alarm + miss > 0
    # Wald's approximation of the mean sample number (it ignores the overshoot: within 20 %)
    assert n0 == pytest.approx(test.expected_n(0.05), rel=0.2)
    assert n1 == pytest.approx(test.expected_n(0.15), rel=0.2)


def test_sla_999_flags_one_percent_violations_and_passes_honest():
    test = sla_test(level=0.999, violated=0.01, alpha=1e-3, beta=1e-3)
    runs = 300
    false_alarm, n_met = _error_rate(test, 0.001, Decision.VIOLATED, runs, seed=3)
    miss, n_violated = _error_rate(test, 0.01, Decision.MET, runs, seed=4)
    assert false_alarm <= 2 / runs and miss <= 2 / runs  # 0.3 expected at alpha = beta = 1e-3
    # requests to a verdict: about a thousand for an honest service, about five hundred for a violating one
    assert 600 < n_met < 1600 and 250 < n_violated < 800
    assert n_met == pytest.approx(test.expected_n(0.001), rel=0.2)
    assert n_violated == pytest.approx(test.expected_n(0.01), rel=0.2)


def test_indifference_region_is_slow_but_terminates():
    test = sla_test(level=0.999, violated=0.01)
    middle = 0.0039  # about where the drift is zero: the slowest place to decide
    assert test.expected_n(middle) > max(test.expected_n(0.001), test.expected_n(0.01))
    verdict = _run(test, middle, random.Random(5))
    assert verdict.decided


def test_honest_model_no_false_positive_and_partial_substitution_caught():
    test = model_test(q=0.01, eps=1e-4)
    rng = random.Random(6)
    honest = [_run(test, 1e-4, rng) for _ in range(200)]
    assert all(v.decision is Decision.MATCHES for v in honest)
    # 10 % of traffic substituted by a model every ID catches: p = 0.1 >> q
    caught = [_run(test, 0.1, rng) for _ in range(200)]
    assert all(v.decision is Decision.SUBSTITUTED for v in caught)
    assert max(v.n for v in caught) < 200
    assert all(v.confidence >= 1 - 1e-3 / (1 - 1e-3) for v in honest + caught)


def test_expected_n_at_the_extremes():
    strict = model_test(q=0.999, eps=1e-4)
    assert strict.expected_n(0.999) == 1.0  # one failure decides: no exponent overflow, at least one check
    assert strict.expected_n(1e-4) == pytest.approx(1.0, abs=0.01)
    assert model_test().expected_n(0.999999) >= 1.0
