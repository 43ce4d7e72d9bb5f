"""What ``curate clean`` acts on: the decision between keeping, relabeling and excluding a checked row.

Two policies (``CleanConfig.policy``):

- ``all`` (the behaviour before issue 18): every flagged row is acted on. ``exclude`` drops every label issue and
  every outlier (``ood_score`` > ``outlier_threshold``); ``relabel`` relabels the label issues whose suggestion has
  probability >= ``relabel_threshold`` and flags the rest.
- ``confident`` (the default): act where the out-of-sample models leave little doubt, keep the hard rows.

  * A label issue is acted on only when the probability of its given label is below ``ISSUE_QUALITY`` times that
    class's confident-joint threshold (cleanlab's per-class mean self-confidence, ``label_issues``): the given
    label is all but ruled out. With ``relabel`` it gets the suggested class when the suggestion clears that
    class's threshold (cleanlab's own test of a confident label), else it is excluded; with ``exclude`` it is
    excluded. The thresholds are relative to the classes' mean confidence, so they follow the models as label
    noise makes them less sure (an absolute 0.9 relabeled 10% of the flips at 20% noise).
  * Junk is a row the models place in no class: ``ood_score`` above ``junk_threshold`` (stricter than the flag's
    ``outlier_threshold``). It is excluded under both actions; the other outliers stay in with their flag.

Calibrated (bench/value_policies.py on bench/bench_value.py's Fashion-MNIST set with 20% uniform flips, seed 0;
BENCHMARKS.md "Curation that pays"): excluding every flagged row removed 8.7% of the clean rows (label issues
3.9%, outliers 4.7%: the hard rows near shirt / t-shirt / pullover / coat) for 95% of the flips and 97% of the junk;
``ISSUE_QUALITY`` 0.1 acts on 80% of the flips for 0.4% of the clean rows, ``junk_threshold`` 0.85 excludes 83% of
the junk for 0.9% of them. Held out (MNIST, look-alike and class-dependent flips) the same q acted on only 53% of
the flips: a known shortfall, the next thing to calibrate.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

POLICIES = ("confident", "all")
#: act on a label issue when p(given label) < ISSUE_QUALITY x the given class's confident-joint threshold
ISSUE_QUALITY = 0.1


@dataclass(frozen=True)
class Decisions:
    """Per checked row (all bool ``(N,)``): ``relabel`` (give the suggested label), ``exclude_label`` (exclude with
    reason ``label_issue``), ``exclude_outlier`` (exclude with reason ``outlier``)."""

    relabel: np.ndarray
    exclude_label: np.ndarray
    exclude_outlier: np.ndarray


def decide(
    found: dict[str, np.ndarray] | None,
    ood_score: np.ndarray | None,
    *,
    action: str,
    policy: str,
    relabel_threshold: float,
    outlier_threshold: float,
    junk_threshold: float,
) -> Decisions:
    """The rows to relabel or exclude, before the ``max_fraction`` cap and the ``act_on`` split filter.

    Args:
        found: ``curate.stages.clean.labelissues.label_issues`` output over the N rows (``is_label_issue``, ``label_quality`` =
            p(given label), ``suggested_confidence``, ``given_threshold``, ``suggested_threshold``); None: label
            errors not checked.
        ood_score: float ``(N,)`` 0..1, higher = more atypical; None: outliers not checked.
        action: ``flag`` | ``exclude`` | ``relabel``; policy: ``confident`` | ``all`` (module doc).
        relabel_threshold / outlier_threshold: policy ``all``'s confidence for relabeling and its outlier flag.
        junk_threshold: policy ``confident`` excludes rows whose ``ood_score`` exceeds it.

    Returns:
        ``Decisions`` over the same N rows; all False for ``flag``.
    """
    n = len(found["is_label_issue"]) if found is not None else len(ood_score) if ood_score is not None else 0
    none = np.zeros(n, bool)
    if action == "flag":
        return Decisions(none, none, none)
    issue = np.asarray(found["is_label_issue"], bool) if found is not None else none
    if policy == "all":
        out = np.asarray(ood_score) > outlier_threshold if ood_score is not None else none
        if action == "exclude":
            return Decisions(none, issue, out)
        sure = issue & (np.asarray(found["suggested_confidence"]) >= relabel_threshold) if found is not None else none
        return Decisions(sure, none, none)
    junk = np.asarray(ood_score) > junk_threshold if ood_score is not None else none
    if found is None:
        return Decisions(none, none, junk)
    ruled_out = issue & (np.asarray(found["label_quality"]) < ISSUE_QUALITY * np.asarray(found["given_threshold"])) & ~junk
    if action == "exclude":
        return Decisions(none, ruled_out, junk)
    sure = ruled_out & (np.asarray(found["suggested_confidence"]) >= np.asarray(found["suggested_threshold"]))
    return Decisions(sure, ruled_out & ~sure, junk)
