"""Rank-level Top-K and poisonous-aware decisions on the real FungiCLEF 2025 metadata, with a
metadata-only classifier (no images).

The classifier is a categorical naive Bayes over the observation metadata (habitat, substrate,
meta-substrate, month, land cover, biogeographical region, district, country, 100 m elevation
bin, 0.5-degree latitude/longitude cell), with add-one smoothing, fitted on the Train CSV and
evaluated per observation on Val-dev. It was a stand-in until the project's own metadata model
could be evaluated; that is now done by the evaluation-only runner
(`configs/evaluate.py:model=<metadata_only run>,fungiclef=<CSV>`, with the run's count prior as
a baseline). It stays as a contrast only: this cruder, far less confident classifier is the one
whose probabilities let the expected-cost rule (`fungizsl.evaluate.decisions`) flag the Val-dev
poisonous observations (docs/evaluation.md).

    python benchmarks/fungiclef_metadata_eval.py --data /data/fungiclef2025 --out nb.json
"""

import argparse
import collections
import csv
import json
import math
import os

import numpy as np

from fungizsl.evaluate import decisions, taxonomy
from fungizsl import metrics_io

FEATURES = ("habitat", "substrate", "metaSubstrate", "month", "landcover", "biogeographicalRegion",
            "district", "countryCode")


def read_observations(path):
    """One record per observation (the first image row; metadata is per observation)."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    seen, out = set(), []
    for r in rows:
        if r["observationID"] not in seen:
            seen.add(r["observationID"])
            out.append(r)
    return rows, out


def features(row):
    values = {k: row[k].strip() for k in FEATURES}
    if row["month"]:
        values["month"] = str(int(float(row["month"])))
    if row["elevation"]:
        values["elevation_bin"] = str(int(float(row["elevation"]) // 100))
    if row["latitude"] and row["longitude"]:
        values["cell"] = f"{math.floor(float(row['latitude']) * 2)}_{math.floor(float(row['longitude']) * 2)}"
    return {k: v for k, v in values.items() if v and v.lower() != "nan"}


class NaiveBayes:
    """Categorical naive Bayes with add-`alpha` smoothing; blank fields are skipped."""

    def __init__(self, observations, classes, alpha=1.0):
        self.classes = list(classes)
        index = {c: k for k, c in enumerate(self.classes)}
        counts = np.zeros(len(self.classes))
        tables = collections.defaultdict(lambda: collections.defaultdict(lambda: np.zeros(len(self.classes))))
        for r in observations:
            k = index[r["category_id"]]
            counts[k] += 1
            for name, value in features(r).items():
                tables[name][value][k] += 1
        self.log_prior = np.log((counts + alpha) / (counts.sum() + alpha * len(counts)))
        self.log_tables = {}
        for name, by_value in tables.items():
            values = list(by_value)
            matrix = np.stack([by_value[v] for v in values], axis=1)  # [C, V]
            denominator = matrix.sum(axis=1, keepdims=True) + alpha * (len(values) + 1)
            log_p = np.log((matrix + alpha) / denominator)
            unseen = np.log(alpha / denominator[:, 0])
            self.log_tables[name] = ({v: i for i, v in enumerate(values)}, log_p, unseen)

    def log_posterior(self, row):
        score = self.log_prior.copy()
        for name, value in features(row).items():
            if name in self.log_tables:
                lookup, log_p, unseen = self.log_tables[name]
                score += log_p[:, lookup[value]] if value in lookup else unseen
        return score


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True,
                        help="folder with FungiTastic-FewShot-Train.csv and FungiTastic-FewShot-Val-dev.csv")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args()
    train_rows, train_obs = read_observations(os.path.join(args.data, "FungiTastic-FewShot-Train.csv"))
    val_rows, val_obs = read_observations(os.path.join(args.data, "FungiTastic-FewShot-Val-dev.csv"))

    train_classes = sorted({r["category_id"] for r in train_rows}, key=int)
    classes = sorted({r["category_id"] for r in train_rows + val_rows}, key=int)
    tax = taxonomy.Taxonomy.from_rows(train_rows + val_rows, "category_id",
                                      {r: r for r in taxonomy.RANKS}, classes)
    poisonous_by_class = {}
    for r in train_rows + val_rows:
        poisonous_by_class[r["category_id"]] = poisonous_by_class.get(r["category_id"], False) or r["poisonous"] == "1"
    poisonous = np.asarray([poisonous_by_class[c] for c in classes])

    model = NaiveBayes(train_obs, train_classes)
    position = np.asarray([classes.index(c) for c in train_classes])
    labels = np.asarray([classes.index(r["category_id"]) for r in val_obs])

    def probabilities(log_posteriors):
        """Over all classes; classes never seen in training get probability 0 (closed set)."""
        probs = np.zeros((len(log_posteriors), len(classes)))
        probs[:, position] = taxonomy.softmax(np.asarray(log_posteriors))
        return probs

    results = {"num_train_observations": len(train_obs), "num_val_observations": len(val_obs),
               "num_train_classes": len(train_classes),
               "val_observations_of_unseen_species": int(sum(r["category_id"] not in set(train_classes)
                                                             for r in val_obs)),
               "num_poisonous_val_observations": int(poisonous[labels].sum())}
    for name, log_post in (("class_prior", [model.log_prior] * len(val_obs)),
                           ("metadata_naive_bayes", [model.log_posterior(r) for r in val_obs])):
        probs = probabilities(log_post)
        results[name] = {"ranks": taxonomy.rank_accuracy(probs, labels, tax, ks=(1, 5, 10)),
                         "decisions": decisions.decision_metrics(probs, labels, poisonous)}
    metrics_io.print_table({k: v for k, v in results.items()}, title="FungiCLEF 2025 Val-dev, metadata only")
    if args.out:
        metrics_io.write_json(args.out, results)


if __name__ == "__main__":
    main()
