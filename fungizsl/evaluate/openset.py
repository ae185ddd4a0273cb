"""Open-set recognition: "is this one of the classes I know?", scored and costed.

FungiCLEF 2023/2024 (Picek, Šulc, Matas et al.) ask for an "unknown" answer when an observation
belongs to a species outside the training set. This module gives the standard post-hoc scores
of known-ness from a closed-set classifier's logits, the standard threshold-free metrics, and the
FungiCLEF 2023 classification cost with an "unknown" label:

* scores (higher = more likely known):
    - maximum softmax probability, MSP (Hendrycks & Gimpel, ICLR 2017,
      https://arxiv.org/abs/1610.02136);
    - negative entropy of the softmax;
    - energy, T * logsumexp(logits / T), i.e. the negative free energy (Liu, Wang, Owens, Li,
      NeurIPS 2020, https://arxiv.org/abs/2010.03759);
* metrics, with known images as positives:
    - AUROC: P(score of a random known > score of a random unknown), ties counted one half;
    - TNR at 95 % TPR: the threshold t is the largest one that still accepts (score >= t) at
      least 95 % of the known images; TNR is the fraction of unknown images below t;
* FungiCLEF 2023 classification error with an unknown class (labels -1 = unknown): a wrong
  known species costs 1, an unknown predicted as a known species costs 10, a known predicted
  as unknown costs 0.1, averaged over images (the constants of the organisers' evaluation
  script; configurable).

Unknowns can be simulated on any labelled set by holding whole classes out of the label set
(`hold_out_classes`, `open_set_labels`): the classifier is built over the kept classes only,
and images of the held-out classes become the unknowns.
"""

from __future__ import annotations

import math
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from fungizsl.evaluate.registry import register
from fungizsl.evaluate.taxonomy import softmax

SCORES = ("msp", "entropy", "energy")
UNKNOWN = -1
FUNGICLEF2023_COSTS = {"unknown_as_known": 10.0, "known_as_unknown": 0.1, "wrong_known": 1.0}


def known_score(logits, kind: str = "msp", temperature: float = 1.0) -> np.ndarray:
    """[N] known-ness score of each row of logits (higher = more likely a known class)."""
    logits = np.asarray(logits, np.float64)
    if kind == "msp":
        return softmax(logits).max(axis=-1)
    if kind == "entropy":
        p = softmax(logits)
        return np.sum(p * np.log(np.maximum(p, 1e-300)), axis=-1)  # = -entropy
    if kind == "energy":
        x = logits / temperature
        m = x.max(axis=-1)
        return temperature * (m + np.log(np.exp(x - m[:, None]).sum(axis=-1)))
    raise ValueError(f"unknown open-set score {kind!r}; scores: {SCORES}")


def auroc(known_scores, unknown_scores) -> float:
    """Area under the ROC curve of known (positive) vs unknown scores; ties count 1/2."""
    pos = np.asarray(known_scores, np.float64)
    neg = np.asarray(unknown_scores, np.float64)
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    both = np.concatenate([pos, neg])
    order = np.argsort(both, kind="stable")
    ranks = np.empty(len(both))
    sorted_values = both[order]
    # Average ranks (1-based) over groups of equal values.
    start = 0
    while start < len(both):
        end = start
        while end + 1 < len(both) and sorted_values[end + 1] == sorted_values[start]:
            end += 1
        ranks[order[start:end + 1]] = (start + end) / 2 + 1
        start = end + 1
    u = ranks[:len(pos)].sum() - len(pos) * (len(pos) + 1) / 2
    return float(u / (len(pos) * len(neg)))


def threshold_at_tpr(known_scores, tpr: float = 0.95) -> float:
    """The largest t with mean(known_scores >= t) >= tpr."""
    pos = np.sort(np.asarray(known_scores, np.float64))[::-1]
    if len(pos) == 0:
        raise ValueError("no known scores")
    k = max(1, math.ceil(tpr * len(pos) - 1e-9))
    return float(pos[k - 1])


def tnr_at_tpr(known_scores, unknown_scores, tpr: float = 0.95) -> float:
    """Fraction of unknowns rejected (score < t) at the threshold that accepts `tpr` of knowns."""
    neg = np.asarray(unknown_scores, np.float64)
    if len(neg) == 0:
        return float("nan")
    return float(np.mean(neg < threshold_at_tpr(known_scores, tpr)))


def predict_with_unknown(logits, threshold: float, kind: str = "msp", temperature: float = 1.0) -> np.ndarray:
    """argmax class, or UNKNOWN (-1) where the known-ness score is below `threshold`."""
    pred = np.argmax(np.asarray(logits), axis=-1)
    return np.where(known_score(logits, kind, temperature) < threshold, UNKNOWN, pred)


def classification_cost(labels, predictions, costs: Mapping[str, float] | None = None) -> float:
    """FungiCLEF 2023 classification error with an unknown class, averaged over images."""
    c = dict(FUNGICLEF2023_COSTS, **(costs or {}))
    y, p = np.asarray(labels), np.asarray(predictions)
    true_unknown, pred_unknown = y == UNKNOWN, p == UNKNOWN
    total = (c["wrong_known"] * np.sum((y != p) & ~true_unknown & ~pred_unknown)
             + c["unknown_as_known"] * np.sum(true_unknown & ~pred_unknown)
             + c["known_as_unknown"] * np.sum(~true_unknown & pred_unknown))
    return float(total / max(len(y), 1))


def hold_out_classes(num_classes: int, num_unknown: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(known, unknown) class ids: `num_unknown` classes drawn without replacement, seeded."""
    if not 0 < num_unknown < num_classes:
        raise ValueError(f"num_unknown must lie in 1..{num_classes - 1}, got {num_unknown}")
    unknown = np.sort(np.random.default_rng(seed).choice(num_classes, num_unknown, replace=False))
    return np.setdiff1d(np.arange(num_classes), unknown), unknown


def open_set_labels(labels, known_classes: Sequence[int]) -> np.ndarray:
    """Labels re-indexed to positions in `known_classes`, UNKNOWN for every other class."""
    known_classes = np.asarray(known_classes)
    lookup = {int(c): i for i, c in enumerate(known_classes)}
    return np.asarray([lookup.get(int(y), UNKNOWN) for y in np.asarray(labels)], np.int64)


@register("openset")
class OpenSetEvaluator:
    """Known-vs-unknown detection from closed-set logits, and the FungiCLEF 2023 cost.

    Config: scores (default SCORES), tpr (0.95), temperature (energy; 1.0), thresholds ({score:
      t} for the "unknown" predictions; default: the threshold at `tpr` on these very images,
      which is an oracle choice and is reported as such), costs (FUNGICLEF2023_COSTS overrides).
    Inputs: logits [N, K] over the known classes, image_labels [N] with UNKNOWN (-1) for images
      of held-out classes.
    Metrics: "{score}/auroc", "{score}/tnr@{tpr}", "{score}/threshold",
      "{score}/threshold_is_oracle", "{score}/cost", and "closed_set/cost" (never answering
      unknown), "num_known", "num_unknown".
    """

    def __init__(self, config: Mapping[str, Any]):
        self.scores = tuple(config.get("scores", SCORES))
        self.tpr = float(config.get("tpr", 0.95))
        self.temperature = float(config.get("temperature", 1.0))
        self.thresholds = dict(config.get("thresholds", {}) or {})
        self.costs = dict(config.get("costs", {}) or {})

    def run(self, *, logits, image_labels=None, labels=None, **unused) -> Iterator[tuple[str, Any]]:
        y = np.asarray(image_labels if image_labels is not None else labels).astype(np.int64)
        logits = np.asarray(logits, np.float64)
        known = y != UNKNOWN
        if known.all() or not known.any():
            raise ValueError("open-set evaluation needs both known and unknown (-1) labels")
        yield "num_known", int(known.sum())
        yield "num_unknown", int((~known).sum())
        yield "closed_set/cost", classification_cost(y, np.argmax(logits, -1), self.costs)
        for kind in self.scores:
            s = known_score(logits, kind, self.temperature)
            yield f"{kind}/auroc", auroc(s[known], s[~known])
            yield f"{kind}/tnr@{self.tpr:g}", tnr_at_tpr(s[known], s[~known], self.tpr)
            threshold = float(self.thresholds.get(kind, threshold_at_tpr(s[known], self.tpr)))
            pred = predict_with_unknown(logits, threshold, kind, self.temperature)
            yield f"{kind}/threshold", threshold
            yield f"{kind}/threshold_is_oracle", kind not in self.thresholds
            yield f"{kind}/cost", classification_cost(y, pred, self.costs)
