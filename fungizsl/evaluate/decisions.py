"""Poisonous-aware decisions: answer with the label of least expected cost, not the most likely.

A forager who is told "edible" about a poisonous mushroom can die; one told "poisonous" about an
edible mushroom loses a meal. FungiCLEF 2023/2024 (Picek, Šulc, Matas et al.) score this with a
cost of 100 for a poisonous species predicted as edible (PSC) and 1 for an edible species
predicted as poisonous (ESC), and a "user-focused" loss that adds the plain classification error.
Given class probabilities p (from any classifier), Bayes decision theory picks

    j* = argmin_j  sum_i p_i * cost(i, j),
    cost(i, j) = wrong_species * [i != j] + poisonous_as_edible * [i poisonous, j edible]
                                          + edible_as_poisonous * [i edible, j poisonous],

which with the defaults (1, 100, 1) is the FungiCLEF 2023 user-focused loss. The expectation is
computed in closed form in O(N C): with P = the total probability of the poisonous classes,
E[cost(j)] = wrong_species * (1 - p_j) + (100 * P if j is edible else 1 * (1 - P)).
Reasoning of this kind (a poisonous class outranking a more likely edible one once its
probability is high enough) is what the FungiCLEF 2024 winners (Wolf, Thelen, Beyerer,
"Poison-Aware Open-Set Fungi Classification") call poisonous re-ranking; here it is the exact
expected-cost rule, with the cost matrix from the config.

`decision_metrics` reports accuracy and costs before (argmax) and after (expected cost). The rule
takes the probabilities at their word, so an over-confident model (a poisonous species at 0.3 %
where it deserves 2 %) never crosses the ~1/101 line; the evaluator can therefore also decide on
probabilities calibrated by a temperature fitted on validation scores it is given
(`calibration.py`; never on the evaluated images).

Why there is no separate "poisonous when P(any poisonous species) > 1/(1 + 100)" rule: the best
edible answer costs w (1 - max_edible p) + 100 P and the best poisonous one w (1 - max_poisonous p)
+ (1 - P), so the rule above already answers a poisonous species exactly when
P > (1 + w (max_edible p - max_poisonous p)) / 101. With w = 0 (the edible/poisonous question
alone) that is the 1/101 threshold; with w = 1 the species term only moves the threshold within
[0, 2/101], and it is the rule that minimises the reported total cost, which a bare threshold
does not.
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping

import numpy as np

from fungizsl.evaluate import calibration
from fungizsl.evaluate.registry import register
from fungizsl.evaluate.taxonomy import softmax

DEFAULT_COSTS = {"poisonous_as_edible": 100.0, "edible_as_poisonous": 1.0, "wrong_species": 1.0}
CALIBRATIONS = ("temperature", "none")


def _costs(costs: Mapping[str, float] | None) -> dict[str, float]:
    unknown = set(costs or {}) - set(DEFAULT_COSTS)
    if unknown:
        raise ValueError(f"unknown cost keys {sorted(unknown)}; known: {sorted(DEFAULT_COSTS)}")
    return dict(DEFAULT_COSTS, **(costs or {}))


def poison_flags(poisonous) -> np.ndarray:
    """int64 [C] flags from a bool table (True poisonous, False edible) or an integer one
    (1 poisonous, 0 edible, -1 (any negative) unknown)."""
    flags = np.asarray(poisonous)
    return flags.astype(np.int64) if flags.dtype == bool else np.where(flags < 0, -1, flags).astype(np.int64)


def flags_of(poisonous, classes) -> np.ndarray:
    """The flags (`poison_flags`) of class indices; a class outside the table (a species only
    the evaluation labels name: the label space comes from the training labels) is unknown, -1."""
    flags, classes = poison_flags(poisonous), np.asarray(classes).astype(np.int64)
    out = np.full(classes.shape, -1, np.int64)
    inside = (classes >= 0) & (classes < len(flags))
    out[inside] = flags[classes[inside]]
    return out


def is_poisonous(poisonous) -> np.ndarray:
    """bool [C] for the decision rule: an unknown flag (-1) counts as edible."""
    return poison_flags(poisonous) == 1


def poison_costs(labels, predictions, poisonous, poisonous_as_edible: float = 100.0,
                 edible_as_poisonous: float = 1.0) -> dict[str, float]:
    """The FungiCLEF 2023/24 poisonous-confusion cost of `predictions` against `labels` (class
    indices [N]): (poisonous_as_edible x #poisonous predicted as edible + edible_as_poisonous x
    #edible predicted as poisonous) / N, with both counts. The package's one definition: the
    trainers' `poison_cost` and the decision metrics both come from here.

    `poisonous` [C] is a bool table or 1 / 0 / -1 per class (see `poison_flags`). Unknown flags:
    an observation whose true or predicted species has an unknown flag (-1, or a class outside
    the table) adds to neither count
    (whether the answer is harmful cannot be told), and it still counts in N."""
    y, p = np.asarray(labels).astype(np.int64), np.asarray(predictions).astype(np.int64)
    true_p, pred_p = flags_of(poisonous, y), flags_of(poisonous, p)
    known = (true_p >= 0) & (pred_p >= 0)
    psc = int(np.sum(known & (true_p == 1) & (pred_p == 0)))
    esc = int(np.sum(known & (true_p == 0) & (pred_p == 1)))
    cost = (poisonous_as_edible * psc + edible_as_poisonous * esc) / max(len(y), 1)
    return {"poison_cost": float(cost), "poisonous_as_edible": psc, "edible_as_poisonous": esc}


def expected_costs(probs, poisonous, costs: Mapping[str, float] | None = None) -> np.ndarray:
    """[N, C]: the expected cost of answering each class, given class probabilities [N, C];
    `poisonous` as in `poison_costs`, a class with an unknown flag is taken as edible here."""
    c = _costs(costs)
    probs = np.asarray(probs, np.float64)
    poisonous = is_poisonous(poisonous)
    if probs.shape[-1] != len(poisonous):
        raise ValueError(f"probs have {probs.shape[-1]} classes, poisonous flags {len(poisonous)}")
    p_poisonous = probs[:, poisonous].sum(axis=1, keepdims=True)
    poison_term = np.where(poisonous[None, :], c["edible_as_poisonous"] * (1.0 - p_poisonous),
                           c["poisonous_as_edible"] * p_poisonous)
    return c["wrong_species"] * (1.0 - probs) + poison_term


def decide(probs, poisonous, costs: Mapping[str, float] | None = None) -> np.ndarray:
    """[N] the class of least expected cost (ties: lowest class index).

    The rule needs a yes or no per class: a class whose flag is unknown (-1) is decided on as
    edible (its probability does not add to P(poisonous), and naming it costs 100 x P(poisonous)
    like any edible answer). The cost then reported (`realised_costs`) counts nothing for such a
    class (`poison_costs`)."""
    return np.argmin(expected_costs(probs, poisonous, costs), axis=-1)


def realised_costs(labels, predictions, poisonous, costs: Mapping[str, float] | None = None) -> dict[str, float]:
    """Mean per-image costs of `predictions`: poison cost (`poison_costs`, so a species with an
    unknown flag costs nothing), species errors and their sum."""
    c = _costs(costs)
    y, p = np.asarray(labels).astype(np.int64), np.asarray(predictions).astype(np.int64)
    poison = poison_costs(y, p, poisonous, c["poisonous_as_edible"], c["edible_as_poisonous"])
    wrong = float(np.mean(y != p)) if len(y) else 0.0
    return {"accuracy": 1.0 - wrong, "poison_cost": poison["poison_cost"],
            "total_cost": float(poison["poison_cost"] + c["wrong_species"] * wrong),
            "poisonous_as_edible": poison["poisonous_as_edible"], "edible_as_poisonous": poison["edible_as_poisonous"]}


def decision_metrics(probs, labels, poisonous, costs: Mapping[str, float] | None = None) -> dict[str, dict]:
    """{"argmax": realised costs, "expected_cost": realised costs} on the same images."""
    probs = np.asarray(probs, np.float64)
    return {"argmax": realised_costs(labels, np.argmax(probs, -1), poisonous, costs),
            "expected_cost": realised_costs(labels, decide(probs, poisonous, costs), poisonous, costs)}


def mean_poisonous_probability(probs, labels, poisonous) -> float | None:
    """Mean total probability of the poisonous classes on observations that are poisonous
    (unknown flags count as not poisonous)."""
    probs, poisonous = np.asarray(probs, np.float64), is_poisonous(poisonous)
    truly = poisonous[np.asarray(labels).astype(np.int64)]
    return float(probs[truly][:, poisonous].sum(-1).mean()) if truly.any() else None


@register("decisions")
class DecisionEvaluator:
    """Cost and accuracy of argmax, of the expected-cost rule, and of the rule on calibrated
    probabilities.

    Config: costs (overrides of DEFAULT_COSTS); calibrate: "temperature" (default) fits one
      temperature on `calibration_logits` / `calibration_labels` when they are given (never on
      the evaluated images; without them nothing calibrated is reported) | "none".
    Inputs: probs [N, C] (or logits [N, C], softmaxed here), image_labels [N], poisonous [C]
      (bool per class, or 1 / 0 / -1 unknown: edible for deciding, no cost, see `poison_costs`); optionally calibration_logits [M, C] and calibration_labels [M], scores of
      held-out data that is not the evaluated data. Images labelled -1 (unknown) are left out.
    Metrics: "{argmax,expected_cost}/{accuracy,poison_cost,total_cost,poisonous_as_edible,
      edible_as_poisonous}", "num_images"; when calibrated also "expected_cost_calibrated/..." and
      "calibration/{temperature,num_fit,fit_nll_before,fit_nll_after,nll_before,nll_after,
      ece_before,ece_after,p_poisonous_on_poisonous_before,p_poisonous_on_poisonous_after}"
      (nll, ece and p_poisonous on the evaluated images; fit_nll on the calibration data).
    """

    def __init__(self, config: Mapping[str, Any]):
        self.costs = _costs(dict(config.get("costs", {}) or {}))
        self.calibrate = config.get("calibrate", "temperature") or "none"
        if self.calibrate not in CALIBRATIONS:
            raise ValueError(f"config.evals.decisions.calibrate must be one of {CALIBRATIONS}, "
                             f"got {self.calibrate!r}")

    def run(self, *, poisonous, probs=None, logits=None, image_labels=None, labels=None,
            calibration_logits=None, calibration_labels=None, **unused) -> Iterator[tuple[str, Any]]:
        if probs is None:
            if logits is None:
                raise ValueError("give probs= or logits=")
            probs = softmax(logits)
        y = np.asarray(image_labels if image_labels is not None else labels).astype(np.int64)
        keep = y >= 0
        probs, y = np.asarray(probs, np.float64)[keep], y[keep]
        yield "num_images", int(keep.sum())
        for rule, metrics in decision_metrics(probs, y, poisonous, self.costs).items():
            for name, value in metrics.items():
                yield f"{rule}/{name}", value
        if self.calibrate == "none" or calibration_logits is None:
            return
        fit_z, fit_y = np.asarray(calibration_logits, np.float64), np.asarray(calibration_labels).astype(np.int64)
        t = calibration.fit_temperature(fit_z, fit_y)
        log_p = calibration.log_softmax(logits)[keep] if logits is not None else np.log(np.maximum(probs, 1e-300))
        calibrated = softmax(log_p / t)
        yield "calibration/temperature", t
        yield "calibration/num_fit", int(len(fit_y))
        yield "calibration/fit_nll_before", calibration.nll(fit_z, fit_y)
        yield "calibration/fit_nll_after", calibration.nll(fit_z, fit_y, t)
        if len(y):
            yield "calibration/nll_before", calibration.nll(log_p, y)
            yield "calibration/nll_after", calibration.nll(log_p, y, t)
            yield "calibration/ece_before", calibration.expected_calibration_error(probs, y)
            yield "calibration/ece_after", calibration.expected_calibration_error(calibrated, y)
            for when, p in (("before", probs), ("after", calibrated)):
                yield f"calibration/p_poisonous_on_poisonous_{when}", mean_poisonous_probability(p, y, poisonous)
        metrics = realised_costs(y, decide(calibrated, poisonous, self.costs), poisonous, self.costs)
        for name, value in metrics.items():
            yield f"expected_cost_calibrated/{name}", value
