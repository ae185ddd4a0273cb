"""Per-observation evaluation for FungiCLEF 2025 (few-shot fungi; Lu et al., 2nd place).

An observation is 1 to 30 photos of one specimen; it is scored once. Image-level class scores
arrive padded, `logits [N_obs, G, C]` with `image_mask [N_obs, G]`, and are combined per
observation by one of

* `mean`: the average of the images' softmax probabilities;
* `max`: for every class, the largest probability any image gives it;
* `attention`: a confidence-weighted average, image weight = softmax over the observation's
  images of (max_c log p_gc) / `temperature`; parameter-free (sharper images count more).

Metrics: Top-K accuracy (the competition metric is Top-5, "Recall@5"), macro-F1 of the Top-1
prediction over the classes present in the labels, and the FungiCLEF 2023/24 poisonous-confusion
cost (100 x poisonous predicted as edible + edible predicted as poisonous) / N, defined once in
`decisions.poison_costs` (a species whose flag is unknown costs nothing). Also:
weighted-vote ensembles of checkpoints (the paper combines epochs 50/100/150), the Kaggle
submission CSV (`observationId,predictions`, top 10 class ids separated by spaces), and the
organisers' baselines on raw features: nearest neighbour and class prototype (cosine).
"""

from __future__ import annotations

import csv
import io
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
from etils import epath

from fungizsl import workdir
from fungizsl.evaluate.calibration import log_softmax
from fungizsl.evaluate.decisions import poison_costs
from fungizsl.evaluate.registry import register

POOLINGS = ("mean", "max", "attention")


def _check_grouped(logits, image_mask):
    logits = np.asarray(logits)
    image_mask = np.asarray(image_mask, bool)
    if logits.ndim != 3 or image_mask.shape != logits.shape[:2]:
        raise ValueError(f"expected logits [N_obs, G, C] and image_mask [N_obs, G]; got {logits.shape} "
                         f"and {image_mask.shape}")
    empty = np.flatnonzero(~image_mask.any(1))
    if empty.size:
        raise ValueError(f"observations at positions {empty[:10].tolist()} have no image in image_mask")
    return logits, image_mask


def pool_observations(logits, image_mask, how: str = "mean", temperature: float = 1.0) -> np.ndarray:
    """Log-probabilities per observation [N_obs, C] from image logits [N_obs, G, C]."""
    logits, image_mask = _check_grouped(logits, image_mask)
    logp = log_softmax(logits)
    m = image_mask[..., None]
    if how == "mean":
        p = np.where(m, np.exp(logp), 0.0).sum(1) / image_mask.sum(1, keepdims=True)
    elif how == "max":
        p = np.where(m, np.exp(logp), 0.0).max(1)
        p = p / p.sum(-1, keepdims=True)
    elif how == "attention":
        confidence = np.where(image_mask, logp.max(-1) / temperature, -np.inf)
        w = np.exp(confidence - confidence.max(1, keepdims=True))
        w = w / w.sum(1, keepdims=True)
        p = (w[..., None] * np.exp(logp)).sum(1)
    else:
        raise ValueError(f"unknown pooling {how!r}; known: {POOLINGS}")
    return np.log(np.maximum(p, 1e-300))


def top_k(scores, k: int) -> np.ndarray:
    """Indices of the k best classes per row, best first (ties: lower class id first)."""
    scores = np.asarray(scores)
    k = min(k, scores.shape[-1])
    order = np.argsort(-scores, axis=-1, kind="stable")
    return order[:, :k]


def top_k_accuracy(scores, labels, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    labels = np.asarray(labels)
    best = top_k(scores, max(ks))
    return {f"top{k}": float(np.mean((best[:, :k] == labels[:, None]).any(1))) for k in ks}


def macro_f1(predictions, labels) -> float:
    """Mean F1 over the classes that occur in `labels` (a class never predicted scores 0)."""
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    scores = []
    for c in np.unique(labels):
        tp = np.sum((predictions == c) & (labels == c))
        fp = np.sum((predictions == c) & (labels != c))
        fn = np.sum((predictions != c) & (labels == c))
        scores.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores)) if scores else 0.0


def observation_metrics(scores, labels, ks=(1, 5, 10), poisonous_by_class=None) -> dict[str, float]:
    """Top-K, macro-F1 and (with a poisonous table: 1 / 0 / -1 unknown per class) the poison cost
    (`decisions.poison_costs`: 100 x poisonous called edible + edible called poisonous, over N;
    a species with an unknown flag costs nothing) of per-observation scores."""
    labels = np.asarray(labels)
    out = top_k_accuracy(scores, labels, ks)
    pred = top_k(scores, 1)[:, 0]
    out["macro_f1"] = macro_f1(pred, labels)
    if poisonous_by_class is not None:
        out["poison_cost"] = poison_costs(labels, pred, poisonous_by_class)["poison_cost"]
    out["num_observations"] = int(len(labels))
    return out


def weighted_vote(member_scores: Sequence[np.ndarray], weights: Sequence[float] | None = None,
                  kind: str = "soft") -> np.ndarray:
    """Ensemble of checkpoints' per-observation scores (log-probabilities or logits) [N, C].

    `soft`: the weighted mean of the members' probabilities (returned as log-probabilities).
    `hard`: each member's Top-1 gets its weight as votes; the soft score breaks ties (it is added
    scaled far below one vote)."""
    members = [np.asarray(s, np.float64) for s in member_scores]
    if not members:
        raise ValueError("weighted_vote needs at least one member")
    if len({m.shape for m in members}) != 1:
        raise ValueError(f"ensemble members differ in shape: {[m.shape for m in members]}")
    w = np.ones(len(members)) if weights is None else np.asarray(weights, np.float64)
    if w.shape != (len(members),) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError(f"weights must be {len(members)} non-negative numbers, not all 0; got {weights}")
    w = w / w.sum()
    probs = sum(wi * np.exp(log_softmax(m)) for wi, m in zip(w, members))
    soft = np.log(np.maximum(probs, 1e-300))
    if kind == "soft":
        return soft
    if kind != "hard":
        raise ValueError(f"kind must be 'soft' or 'hard', got {kind!r}")
    votes = np.zeros_like(members[0])
    rows = np.arange(votes.shape[0])
    for wi, m in zip(w, members):
        votes[rows, np.argmax(m, -1)] += wi
    return votes + 1e-6 * probs


def write_submission(path, observation_ids, scores, class_ids: Sequence[int] | None = None, k: int = 10) -> str:
    """The Kaggle CSV: header `observationId,predictions`, one row per observation with its k best
    class ids separated by spaces (column j of `scores` is class `class_ids[j]`, default j).
    Every process may call it (each has the scores); process 0 alone writes, through
    :mod:`fungizsl.workdir` (recorded in its write audit)."""
    observation_ids = np.asarray(observation_ids)
    scores = np.asarray(scores)
    if len(observation_ids) != len(scores):
        raise ValueError(f"{len(observation_ids)} observation ids for {len(scores)} score rows")
    if len(np.unique(observation_ids)) != len(observation_ids):
        raise ValueError("observation ids repeat; pool images per observation before writing a submission")
    ids = np.arange(scores.shape[1]) if class_ids is None else np.asarray(class_ids)
    best = ids[top_k(scores, k)]
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["observationId", "predictions"])
    for obs, row in zip(observation_ids, best):
        writer.writerow([int(obs), " ".join(str(int(c)) for c in row)])
    if workdir.is_main():
        workdir.write_text(path, text.getvalue())
    return str(path)


def read_submission(path) -> dict[int, list[int]]:
    with epath.Path(path).open() as f:
        reader = csv.DictReader(f)
        if reader.fieldnames != ["observationId", "predictions"]:
            raise ValueError(f"{path}: header must be observationId,predictions, got {reader.fieldnames}")
        return {int(row["observationId"]): [int(c) for c in row["predictions"].split()] for row in reader}


# -------------------------------------------------------------------------------------------------
# Organisers' baselines on raw features
# -------------------------------------------------------------------------------------------------

def _normalise(x):
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def nearest_neighbour_logits(features, train_features, train_labels, num_classes: int,
                             scale: float = 30.0) -> np.ndarray:
    """Per image: scale x the cosine of the most similar training image of each class [.., C]
    (classes without a training image get -scale). `features` may be [N, G, D]."""
    f = _normalise(features)
    t = _normalise(train_features)
    sims = f.reshape(-1, f.shape[-1]) @ t.T
    out = np.full((sims.shape[0], num_classes), -1.0, np.float32)
    train_labels = np.asarray(train_labels)
    for c in np.unique(train_labels):
        out[:, c] = sims[:, train_labels == c].max(1)
    return scale * out.reshape(f.shape[:-1] + (num_classes,))


def prototype_logits(features, train_features, train_labels, num_classes: int, scale: float = 30.0) -> np.ndarray:
    """Per image: scale x the cosine to each class's prototype (mean of its normalised training
    features, renormalised); classes without a training image get -scale."""
    t = _normalise(train_features)
    train_labels = np.asarray(train_labels)
    protos = np.zeros((num_classes, t.shape[1]), np.float32)
    np.add.at(protos, train_labels, t)
    present = np.bincount(train_labels, minlength=num_classes) > 0
    protos = _normalise(protos)
    f = _normalise(features)
    logits = f @ protos.T
    logits[..., ~present] = -1.0
    return scale * logits


@register("fungiclef_observations")
class FungiClefObservationEvaluator:
    """FungiCLEF 2025 per-observation metrics (Lu et al.; the functions above have the definitions).

    Config:
      ks: Top-K values (default (1, 5, 10)); the competition metric is top5.
      pooling: how an observation's images are combined for the headline numbers: mean | max |
        attention (default mean). compare_pooling: also report every pooling (default True).
      submission_path: if set, the Kaggle CSV of the pooled scores goes there.
    Inputs: `logits [N_obs, G, C]`, `image_mask [N_obs, G]`, `labels [N_obs]` (-1: unlabelled,
      only the submission is written), `observation_ids [N_obs]`, optional `poisonous_by_class
      [C]`; for the organisers' baselines `raw_features [N_obs, G, D]` with `train_raw_features
      [M, D]`, `train_raw_labels [M]`; for a metadata-only classifier `metadata_scores [N_obs, C]`.
    Metrics: top{k}, macro_f1, poison_cost, num_observations; pooling/<how>/...; baselines/
      {nearest_neighbour,prototype,metadata}/...
    """

    def __init__(self, config: Mapping[str, Any]):
        self.ks = tuple(config.get("ks", (1, 5, 10)))
        self.pooling = config.get("pooling", "mean")
        if self.pooling not in POOLINGS:
            raise ValueError(f"fungiclef_observations.pooling must be one of {POOLINGS}, "
                             f"got {self.pooling!r}")
        self.compare_pooling = config.get("compare_pooling", True)
        self.submission_path = config.get("submission_path", None)

    def run(self, *, logits, image_mask, labels, observation_ids=None, poisonous_by_class=None,
            raw_features=None, train_raw_features=None, train_raw_labels=None, metadata_scores=None,
            valid=None, **unused) -> Iterator[tuple[str, Any]]:
        if valid is not None:  # drop padded observations
            keep = np.asarray(valid, bool)
            logits, image_mask, labels = np.asarray(logits)[keep], np.asarray(image_mask)[keep], np.asarray(labels)[keep]
            observation_ids = None if observation_ids is None else np.asarray(observation_ids)[keep]
            raw_features = None if raw_features is None else np.asarray(raw_features)[keep]
            metadata_scores = None if metadata_scores is None else np.asarray(metadata_scores)[keep]
        labels = np.asarray(labels)
        scores = pool_observations(logits, image_mask, self.pooling)
        if self.submission_path and observation_ids is not None:
            write_submission(self.submission_path, observation_ids, scores)
        labelled = labels >= 0
        if not labelled.any():
            return
        metrics = lambda s: observation_metrics(s[labelled], labels[labelled], self.ks,
                                                             poisonous_by_class)
        yield from metrics(scores).items()
        if self.compare_pooling:
            for how in POOLINGS:
                pooled = pool_observations(logits, image_mask, how)
                for name, value in metrics(pooled).items():
                    yield f"pooling/{how}/{name}", value
        if raw_features is not None and train_raw_features is not None:
            num_classes = np.shape(logits)[-1]
            for name, fn in (("nearest_neighbour", nearest_neighbour_logits),
                             ("prototype", prototype_logits)):
                image_logits = fn(raw_features, train_raw_features, train_raw_labels, num_classes)
                pooled = pool_observations(image_logits, image_mask, self.pooling)
                for metric, value in metrics(pooled).items():
                    yield f"baselines/{name}/{metric}", value
        if metadata_scores is not None:
            for metric, value in metrics(np.asarray(metadata_scores)).items():
                yield f"baselines/metadata/{metric}", value
