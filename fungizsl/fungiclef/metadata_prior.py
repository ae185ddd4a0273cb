"""A count-based metadata prior for few-shot species: naive Bayes with taxonomic back-off plus a
geographic kernel (FungiCLEF 2025; used beside the stage-2 model of Lu et al.).

With 1 to 4 training observations per species, a species' own metadata counts are mostly noise.
For each categorical field f the class-conditional distribution is

    P(v | c) ~ n_c(v) + genus_weight * P_genus(c)(v) + alpha * V * P_all(v)

(the species' counts, its genus' pooled distribution, and the global one), multiplied over the
fields with a count prior log(n_c + 1); the geographic term adds log(floor + sum_j exp(-d_j^2 /
2 sigma^2)) over the class's training observations (distance in km). `scores(..., leave_one_out=
True)` removes each training record's own counts, so a model trained on top of the prior sees the
same kind of evidence it will see on new observations.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import numpy as np

from fungizsl.fungiclef.metadata import _field_value

PRIOR_FIELDS = ("habitat", "substrate", "metaSubstrate", "landcover", "region", "district",
                "biogeographicalRegion", "month")


def _latlon_km(records):
    out = np.full((len(records), 2), np.nan)
    for i, r in enumerate(records):
        try:
            lat, lon = float(r.get("latitude")), float(r.get("longitude"))
        except (TypeError, ValueError):
            continue
        out[i] = lat * 111.0, lon * 111.0 * math.cos(math.radians(56.0))
    return out


@dataclasses.dataclass
class MetadataPrior:
    num_classes: int
    fields: Sequence[str] = PRIOR_FIELDS
    alpha: float = 0.1
    genus_weight: float = 1.0
    count_prior: float = 1.0
    geo_sigma_km: float = 1.0
    geo_floor: float = 0.01

    def fit(self, records: Sequence[Mapping], labels, genus_of_class: np.ndarray | None = None) -> "MetadataPrior":
        labels = np.asarray(labels)
        C = self.num_classes
        self.labels = labels
        self.class_counts = np.bincount(labels, minlength=C).astype(np.float64)
        self.vocab, self.counts, self.row_ids = {}, {}, {}
        for f in self.fields:
            vocab: dict[str, int] = {}
            ids = np.array([vocab.setdefault(_field_value(r, f), len(vocab)) for r in records])
            M = np.zeros((C, len(vocab) + 1))  # the last column: unseen values
            np.add.at(M, (labels, ids), 1.0)
            self.vocab[f], self.counts[f], self.row_ids[f] = vocab, M, ids
        self.genus = genus_of_class
        self.train_xy = _latlon_km(records)
        return self

    def _field_parts(self, M):
        """(numerator [C, V], denominator [C]) of P(v | c), and the genus table."""
        V = M.shape[1]
        glob = M.sum(0) + 1.0
        glob /= glob.sum()
        numer = M + self.alpha * V * glob[None]
        G = None
        if self.genus is not None and self.genus_weight:
            G = np.zeros((self.genus.max() + 1, V))
            np.add.at(G, self.genus, M)
            numer = numer + self.genus_weight * (G / np.maximum(G.sum(1, keepdims=True), 1.0))[self.genus]
        return numer, numer.sum(1), G, self.alpha * V * glob

    def scores(self, records: Sequence[Mapping], leave_one_out: bool = False) -> np.ndarray:
        """Log-scores [len(records), C]. With leave_one_out, `records` must be the fitted ones and
        row i is scored as if it had not been counted (its class and genus counts; the global
        smoothing distribution keeps it, a change of 1 in thousands)."""
        n = len(records)
        if leave_one_out and n != len(self.labels):
            raise ValueError("leave_one_out scoring needs exactly the records the prior was fitted on")
        counts = np.broadcast_to(self.class_counts, (n, self.num_classes)).copy()
        if leave_one_out:
            counts[np.arange(n), self.labels] -= 1
        total = self.count_prior * np.log(counts + 1.0)
        for f in self.fields:
            M = self.counts[f]
            unseen = M.shape[1] - 1
            ids = np.array([self.vocab[f].get(_field_value(r, f), unseen) for r in records])
            numer, denom, G, smooth = self._field_parts(M)
            total += np.log(numer[:, ids].T) - np.log(denom)[None]
            if leave_one_out:
                self._leave_one_out(total, M, ids, numer, denom, G, smooth)
        if self.geo_sigma_km:
            total += self._geo(records, leave_one_out)
        return total

    def _leave_one_out(self, total, M, ids, numer, denom, G, smooth):
        for i, (c, v) in enumerate(zip(self.labels, ids)):
            if G is None:
                affected = np.array([c])
                genus_num = genus_den = 0.0
            else:
                g = self.genus[c]
                affected = np.flatnonzero(self.genus == g)
                rest = G[g].sum() - 1
                genus_num = self.genus_weight * (G[g, v] - 1) / rest if rest > 0 else 0.0
                genus_den = self.genus_weight * (1.0 if rest > 0 else 0.0)
            own = (affected == c).astype(np.float64)
            new_num = M[affected, v] - own + smooth[v] + genus_num
            new_den = M[affected].sum(1) - own + smooth.sum() + genus_den
            total[i, affected] += (np.log(new_num) - np.log(new_den)) - (
                np.log(numer[affected, v]) - np.log(denom[affected]))

    def _geo(self, records, leave_one_out):
        n = len(records)
        xy = _latlon_km(records)
        out = np.zeros((n, self.num_classes))
        for i0 in range(0, n, 512):
            rows = np.arange(i0, min(n, i0 + 512))
            d2 = ((xy[rows, None, :] - self.train_xy[None]) ** 2).sum(-1)
            kernel = np.exp(-np.nan_to_num(d2, nan=np.inf) / (2 * self.geo_sigma_km ** 2))
            if leave_one_out:
                kernel[np.arange(len(rows)), rows] = 0.0
            mass = np.zeros((len(rows), self.num_classes))
            np.add.at(mass.T, self.labels, kernel.T)
            out[rows] = np.log(mass + self.geo_floor)
        return out
