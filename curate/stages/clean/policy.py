"""What ``curate clean`` acts on: the decision between keeping, relabeling and excluding a checked row.

Three policies (``CleanConfig.policy``):

- ``estimate`` (the default): act on as many rows as cleanlab estimates are mislabeled, the worst first. The rows are
  ranked by the probability of their given label (``label_quality``, out-of-sample) and the worst ``ISSUE_SHARE``
  (0.9) x cleanlab's ``num_label_issues`` estimate are acted on: ``exclude`` drops them, ``relabel`` gives each the
  suggested class when that class is not the given one and its probability clears the suggested class's
  confident-joint threshold, and excludes the rest. The count follows the data: few rows on a clean set, many on a
  noisy one, whatever the models' confidence scale (the ``confident`` rule below did not follow it: on MNIST, with
  sure models, it acted on half of the flips). Junk (``ood_score`` above ``junk_threshold``) is excluded as well.
- ``confident``: act only where the out-of-sample models leave little doubt, keep the hard rows. A label issue is
  acted on when the probability of its given label is below ``ISSUE_QUALITY`` (0.1) times that class's
  confident-joint threshold (cleanlab's per-class mean self-confidence, ``label_issues``); with ``relabel`` it gets
  the suggested class when the suggestion clears that class's threshold, else it is excluded. Junk as above; the
  other outliers stay in with their flag.
- ``all`` (the behaviour before issue 18): every flagged row is acted on. ``exclude`` drops every label issue and
  every outlier (``ood_score`` > ``outlier_threshold``); ``relabel`` relabels the label issues whose suggestion has
  probability >= ``relabel_threshold`` and flags the rest.

Calibrated on one set and reported on others (bench/value_policies.py and bench/fold_variants.py's sets from
bench/bench_value.py; BENCHMARKS.md "Curation that pays"). The criterion, fixed before any run: the fewest rows left
with a wrong label while under 2% of the clean rows are lost, on Fashion-MNIST with 20% uniform flips, seed 0. There
``ISSUE_SHARE`` 0.9 keeps 247 wrong rows for 1.71% of the clean rows lost (1.0: 2.47%, over budget), ``confident``
q = 0.1 397 for 1.27%, ``all`` 121 for 7.98%. ``junk_threshold`` 0.85 was chosen on the same set. Held out (other noise
kinds, levels, seeds and MNIST), ``estimate`` leaves 30-45% fewer wrong rows than ``confident``, and loses more
clean rows (2.7% with look-alike flips at 10%, 9.9% at 40% mixed noise).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

POLICIES = ("estimate", "confident", "all")
#: policy estimate acts on the worst ISSUE_SHARE x cleanlab's estimated number of label issues
ISSUE_SHARE = 0.9
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
            p(given label), ``suggested_confidence``, ``given_threshold``, ``suggested_threshold``,
            ``estimate_rank``); None: label errors not checked.
        ood_score: float ``(N,)`` 0..1, higher = more atypical; None: outliers not checked.
        action: ``flag`` | ``exclude`` | ``relabel`` | ``weight`` (junk only: the other rows get a training weight,
            ``curate.stages.clean.weights``); policy: ``estimate`` | ``confident`` | ``all`` (module doc).
        relabel_threshold / outlier_threshold: policy ``all``'s confidence for relabeling and its outlier flag.
        junk_threshold: policies ``estimate`` and ``confident`` exclude rows whose ``ood_score`` exceeds it.

    Returns:
        ``Decisions`` over the same N rows; all False for ``flag``.
    """
    n = len(found["is_label_issue"]) if found is not None else len(ood_score) if ood_score is not None else 0
    none = np.zeros(n, bool)
    if action == "flag":
        return Decisions(none, none, none)
    issue = np.asarray(found["is_label_issue"], bool) if found is not None else none
    if action == "weight":  # every policy: junk goes, the label checks become weights (curate.stages.clean.weights)
        return Decisions(none, none, np.asarray(ood_score) > junk_threshold if ood_score is not None else none)
    if policy == "all":
        out = np.asarray(ood_score) > outlier_threshold if ood_score is not None else none
        if action == "exclude":
            return Decisions(none, issue, out)
        sure = issue & (np.asarray(found["suggested_confidence"]) >= relabel_threshold) if found is not None else none
        return Decisions(sure, none, none)
    junk = np.asarray(ood_score) > junk_threshold if ood_score is not None else none
    if found is None:
        return Decisions(none, none, junk)
    quality = np.asarray(found["label_quality"])
    if policy == "estimate":
        ruled_out = (np.asarray(found["estimate_rank"]) < ISSUE_SHARE) & ~junk
    else:
        ruled_out = issue & (quality < ISSUE_QUALITY * np.asarray(found["given_threshold"])) & ~junk
    if action == "exclude":
        return Decisions(none, ruled_out, junk)
    sugg = np.asarray(found["suggested_confidence"])
    # a row ranked among the worst may still have its given label as the argmax (unsure everywhere): exclude it
    sure = ruled_out & (sugg > quality) & (sugg >= np.asarray(found["suggested_threshold"]))
    return Decisions(sure, ruled_out & ~sure, junk)
