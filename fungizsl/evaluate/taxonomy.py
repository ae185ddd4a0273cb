"""Taxonomy-aware zero-shot evaluation: lineage prompts, CHiLS, and accuracy at every rank.

Fungal labels form a hierarchy (kingdom -> phylum -> class -> order -> family -> genus ->
species). Three published ideas use it at prediction time, all implemented here on arrays:

* **Lineage prompts** (BioCLIP, Stevens et al. 2024, https://arxiv.org/abs/2311.18803): the text
  of a class is its whole taxonomic lineage, optionally followed by a common name, e.g.
  "a photo of Fungi Basidiomycota Agaricomycetes Agaricales Amanitaceae Amanita muscaria, the
  fly agaric." (`Taxonomy.lineage_prompt`). Names a lineage lacks are skipped.
* **Rank-level prediction by summing probabilities** (as BioCLIP evaluates above species): the
  probability of a genus is the sum of the probabilities of its species, so a model can be
  scored at any rank without new prompts (`rank_probabilities`, `rank_accuracy`).
* **CHiLS** (Novack, McAuley, Lipton, Garg, ICML 2023, "CHiLS: Zero-Shot Image Classification
  with Hierarchical Label Sets", https://arxiv.org/abs/2302.02551): classify against the
  *subclasses* of every class (species under a genus, or sub-descriptions of a growth stage) and
  map the winner back to its parent (`chils_predict`). Two rules:
    - ``plain``: a parent's score is the best score among its subclasses (argmax over all
      subclasses, then map to the parent);
    - ``reweighted``: the paper's rule; each subclass probability (softmax over all subclasses)
      is multiplied by the probability of its parent (softmax over the parent prompts), then the
      argmax subclass is mapped back.

Classes without a name at some rank (a Mushroom Observer label that is only an order, a GBIF
lookup that failed) are handled explicitly: at that rank they form their own singleton group
(so probabilities still sum to one), and images of such classes are left out of that rank's
accuracy (``num_images`` says how many counted).

The hierarchy is read from a CSV with taxonomy columns (FungiCLEF 2025: ``kingdom``, ``phylum``,
``class``, ``order``, ``family``, ``genus``, ``species``; Mushroom Observer: ``gbif_info/...``
columns) or from a small JSON/CSV taxonomy file (`Taxonomy.from_file`).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

from fungizsl.evaluate.registry import register
from fungizsl.evaluate.zeroshot import top_k_indices

RANKS: tuple[str, ...] = ("kingdom", "phylum", "class", "order", "family", "genus", "species")

# A few well-known common names (written for this project; extend with `common_names=`).
COMMON_NAMES: dict[str, str] = {
    "Amanita muscaria": "fly agaric",
    "Amanita phalloides": "death cap",
    "Amanita virosa": "destroying angel",
    "Amanita caesarea": "Caesar's mushroom",
    "Boletus edulis": "penny bun",
    "Cantharellus cibarius": "chanterelle",
    "Agaricus campestris": "field mushroom",
    "Agaricus bisporus": "button mushroom",
    "Pleurotus ostreatus": "oyster mushroom",
    "Coprinus comatus": "shaggy ink cap",
    "Laetiporus sulphureus": "chicken of the woods",
    "Grifola frondosa": "hen of the woods",
    "Hericium erinaceus": "lion's mane",
    "Macrolepiota procera": "parasol mushroom",
    "Morchella esculenta": "morel",
    "Armillaria mellea": "honey fungus",
    "Psilocybe semilanceata": "liberty cap",
    "Psilocybe cubensis": "golden teacher",
    "Gyromitra esculenta": "false morel",
    "Hypholoma fasciculare": "sulphur tuft",
    "Trametes versicolor": "turkey tail",
    "Fomes fomentarius": "tinder fungus",
    "Calocera viscosa": "yellow stagshorn",
    "Clathrus ruber": "red cage",
    "Phallus impudicus": "common stinkhorn",
}

# Column names of the rank fields, by CSV flavour (checked in this order).
RANK_COLUMNS: dict[str, dict[str, str]] = {
    "fungiclef": {r: r for r in RANKS},
    "gbif_info": {r: f"gbif_info/{r}" for r in RANKS},
}


def _clean(value) -> str:
    text = "" if value is None else str(value).strip()
    return "" if text.lower() in ("nan", "none", "null") else text


@dataclasses.dataclass(frozen=True)
class Taxonomy:
    """The lineage of every class of a classifier.

    classes: the class names, index = class id.
    lineages: per class, {rank: name}; a rank the class lacks maps to "" (or is absent).
    common_names: {species or class name: common name}, used by lineage prompts.
    """

    classes: tuple[str, ...]
    lineages: tuple[Mapping[str, str], ...]
    common_names: Mapping[str, str] = dataclasses.field(default_factory=lambda: dict(COMMON_NAMES))

    def __post_init__(self):
        if len(self.classes) != len(self.lineages):
            raise ValueError(f"{len(self.classes)} classes but {len(self.lineages)} lineages")
        if len(set(self.classes)) != len(self.classes):
            raise ValueError("class names must be distinct")

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def from_rows(cls, rows: Iterable[Mapping[str, Any]], class_column: str,
                  rank_columns: Mapping[str, str], classes: Sequence[str] | None = None,
                  where: str = "rows", **kwargs) -> "Taxonomy":
        """One lineage per distinct value of `class_column` (the first row of a class wins;
        blank rank fields are filled from later rows of the same class). `classes` fixes the
        class order (and which classes are kept); default: sorted distinct values."""
        found: dict[str, dict[str, str]] = {}
        for number, row in enumerate(rows, start=2):
            if class_column not in row:
                raise KeyError(f"{where}: no column {class_column!r}; columns: {sorted(row)}")
            name = _clean(row[class_column])
            if not name:
                continue
            lineage = found.setdefault(name, {r: "" for r in RANKS})
            for rank, column in rank_columns.items():
                if not lineage.get(rank):
                    lineage[rank] = _clean(row.get(column))
        if classes is None:
            classes = sorted(found)
        missing = [c for c in classes if c not in found]
        if missing:
            raise KeyError(f"{where}: classes {missing[:5]} have no row (column {class_column!r})")
        return cls(tuple(classes), tuple(found[c] for c in classes), **kwargs)

    @classmethod
    def from_csv(cls, path, class_column: str | None = None, classes: Sequence[str] | None = None,
                 **kwargs) -> "Taxonomy":
        """Reads the taxonomy columns of a FungiCLEF CSV or a Mushroom Observer (GBIF) CSV.

        `class_column` defaults to "species" for FungiCLEF-style files and to the first column
        ("label") for Mushroom Observer files.
        """
        path = os.fspath(path)
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                raise ValueError(f"{path}: empty CSV")
            # Mushroom Observer files repeat the column "label": keep the first occurrence.
            rows = [{k: v for k, v in reversed(list(zip(header, values)))} for values in reader]
        for flavour, columns in RANK_COLUMNS.items():
            if sum(c in header for c in columns.values()) >= 3:
                break
        else:
            raise ValueError(f"{path}: no taxonomy columns found (looked for {list(RANK_COLUMNS['fungiclef'])} "
                             f"or gbif_info/<rank>)")
        columns = {r: c for r, c in columns.items() if c in header}
        if class_column is None:
            class_column = "species" if flavour == "fungiclef" else header[0]
        return cls.from_rows(rows, class_column, columns, classes, where=path, **kwargs)

    @classmethod
    def from_file(cls, path, classes: Sequence[str] | None = None, **kwargs) -> "Taxonomy":
        """A small taxonomy file: JSON {class: {rank: name, ..., "common_name": ...}} or a CSV
        with a "class" column and rank columns (any of RANKS, plus an optional "common_name")."""
        path = os.fspath(path)
        if path.endswith(".json"):
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
            if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
                raise ValueError(f"{path}: expected a JSON object {{class: {{rank: name}}}}")
            rows = [dict(v, **{"class": k}) for k, v in data.items()]
        else:
            with open(path, newline="", encoding="utf-8") as f:
                rows = list(csv.DictReader(f))
            if rows and "class" not in rows[0]:
                return cls.from_csv(path, classes=classes, **kwargs)
        common = dict(kwargs.pop("common_names", COMMON_NAMES))
        for row in rows:
            if _clean(row.get("common_name")):
                common[_clean(row["class"])] = _clean(row["common_name"])
        # "class" is both the key column and a rank: the rank comes from "rank_class" if given.
        rank_columns = {r: r for r in RANKS if r != "class"}
        rank_columns["class"] = "rank_class"
        return cls.from_rows(rows, "class", rank_columns, classes, where=path, common_names=common, **kwargs)

    # -- prompts ------------------------------------------------------------------------------

    def lineage(self, index: int, up_to: str = "species") -> list[str]:
        """The non-blank names from kingdom down to `up_to`. A species name that repeats the
        genus ("Amanita muscaria") is kept whole, as BioCLIP writes it."""
        names = []
        for rank in RANKS[:RANKS.index(up_to) + 1]:
            name = _clean(self.lineages[index].get(rank))
            if name and (not names or names[-1] != name):
                names.append(name)
        return names

    def common_name(self, index: int) -> str:
        lineage = self.lineages[index]
        for key in (_clean(lineage.get("species")), self.classes[index]):
            if key and key in self.common_names:
                return self.common_names[key]
        return ""

    def lineage_prompt(self, index: int, template: str = "a photo of {}.", with_common_name: bool = True) -> str:
        """BioCLIP-style text of class `index`: its lineage (falling back to the class name when
        no rank is known), with ", the <common name>" where one is known."""
        text = " ".join(self.lineage(index)) or self.classes[index]
        common = self.common_name(index) if with_common_name else ""
        return template.format(f"{text}, the {common}" if common else text)

    def lineage_prompts(self, template: str = "a photo of {}.", with_common_name: bool = True) -> list[str]:
        return [self.lineage_prompt(i, template, with_common_name) for i in range(len(self.classes))]

    # -- ranks --------------------------------------------------------------------------------

    def rank_groups(self, rank: str) -> tuple[list[str], np.ndarray, np.ndarray]:
        """(group names, class_to_group [C], named [G]) for `rank`.

        Named groups come first, in first-seen class order; each class without a name at this
        rank gets a singleton group "[<class>]" with named=False.
        """
        if rank not in RANKS:
            raise ValueError(f"unknown rank {rank!r}; ranks: {RANKS}")
        names: list[str] = []
        index: dict[str, int] = {}
        class_to_group = np.full(len(self.classes), -1, np.int64)
        for c, lineage in enumerate(self.lineages):
            name = _clean(lineage.get(rank))
            if name:
                class_to_group[c] = index.setdefault(name, len(index))
                if class_to_group[c] == len(names):
                    names.append(name)
        named = [True] * len(names)
        for c in np.flatnonzero(class_to_group < 0):
            class_to_group[c] = len(names)
            names.append(f"[{self.classes[c]}]")
            named.append(False)
        return names, class_to_group, np.asarray(named)

    def ranks_present(self) -> list[str]:
        """Ranks at which at least one class has a name."""
        return [r for r in RANKS if any(_clean(l.get(r)) for l in self.lineages)]


# ---------------------------------------------------------------------------------------------
# Array functions
# ---------------------------------------------------------------------------------------------


def softmax(logits, axis: int = -1) -> np.ndarray:
    x = np.asarray(logits, np.float64)
    x = x - x.max(axis=axis, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=axis, keepdims=True)


def rank_probabilities(probs, class_to_group, num_groups: int) -> np.ndarray:
    """[N, G]: the probability of each group = the sum of its classes' probabilities."""
    probs = np.asarray(probs, np.float64)
    class_to_group = np.asarray(class_to_group)
    if probs.shape[-1] != len(class_to_group):
        raise ValueError(f"probs have {probs.shape[-1]} classes, class_to_group {len(class_to_group)}")
    out = np.zeros(probs.shape[:-1] + (num_groups,))
    for c, g in enumerate(class_to_group):
        out[..., g] += probs[..., c]
    return out


def rank_accuracy(probs, labels, taxonomy: Taxonomy, ranks: Sequence[str] | None = None,
                  ks: Sequence[int] = (1, 5)) -> dict[str, dict[str, float]]:
    """Top-k accuracy at each rank from class probabilities [N, C] (summed per group).

    Also reports "top1_from_argmax": the group of the top-1 class (no summing), to show what
    summing adds. Images whose true class has no name at a rank are left out at that rank.
    """
    probs = np.asarray(probs, np.float64)
    labels = np.asarray(labels).astype(np.int64)
    out = {}
    for rank in ranks or taxonomy.ranks_present():
        names, class_to_group, named = taxonomy.rank_groups(rank)
        group_probs = rank_probabilities(probs, class_to_group, len(names))
        true_group = class_to_group[labels]
        counted = named[true_group]
        m: dict[str, float] = {"num_images": int(counted.sum()), "num_groups": int(named.sum())}
        if counted.any():
            for k in ks:
                hits = (top_k_indices(group_probs[counted], k) == true_group[counted, None]).any(-1)
                m[f"top{k}"] = float(hits.mean())
            argmax_group = class_to_group[np.argmax(probs[counted], axis=-1)]
            m["top1_from_argmax"] = float(np.mean(argmax_group == true_group[counted]))
        out[rank] = m
    return out


CHILS_RULES = ("plain", "reweighted")


def chils_predict(sub_logits, sub_to_parent, num_parents: int, parent_logits=None,
                  rule: str = "plain") -> tuple[np.ndarray, np.ndarray]:
    """CHiLS: parent predictions from subclass scores. Returns (predictions [N], scores [N, P]).

    sub_logits: [N, S] (scaled) similarities of each image with each subclass prompt.
    sub_to_parent: [S] parent index of each subclass; every parent needs a subclass.
    parent_logits: [N, P] similarities with the parent prompts (needed by "reweighted").
    rule: "plain" (score of a parent = max over its subclasses of the subclass logit) or
      "reweighted" (max over its subclasses of softmax(sub)[s] * softmax(parent)[parent(s)]).
    Ties go to the lowest parent index.
    """
    sub_logits = np.asarray(sub_logits, np.float64)
    sub_to_parent = np.asarray(sub_to_parent).astype(np.int64)
    if sub_logits.shape[-1] != len(sub_to_parent):
        raise ValueError(f"sub_logits have {sub_logits.shape[-1]} subclasses, sub_to_parent {len(sub_to_parent)}")
    if set(range(num_parents)) - set(sub_to_parent.tolist()):
        raise ValueError(f"parents {sorted(set(range(num_parents)) - set(sub_to_parent.tolist()))} have no subclass")
    if rule == "plain":
        sub_scores = sub_logits
    elif rule == "reweighted":
        if parent_logits is None:
            raise ValueError("the reweighted CHiLS rule needs parent_logits")
        parent_probs = softmax(parent_logits)
        if parent_probs.shape[-1] != num_parents:
            raise ValueError(f"parent_logits have {parent_probs.shape[-1]} classes, expected {num_parents}")
        sub_scores = softmax(sub_logits) * parent_probs[:, sub_to_parent]
    else:
        raise ValueError(f"unknown CHiLS rule {rule!r}; rules: {CHILS_RULES}")
    scores = np.full(sub_scores.shape[:-1] + (num_parents,), -np.inf)
    for s, p in enumerate(sub_to_parent):
        scores[..., p] = np.maximum(scores[..., p], sub_scores[..., s])
    return np.argmax(scores, axis=-1), scores


# ---------------------------------------------------------------------------------------------
# Evaluators
# ---------------------------------------------------------------------------------------------


def _labels(image_labels, labels):
    got = image_labels if image_labels is not None else labels
    if got is None:
        raise ValueError("give image_labels= (or labels=)")
    return np.asarray(got).astype(np.int64)


@register("taxonomy")
class TaxonomyEvaluator:
    """Accuracy at every rank from class logits, by summing class probabilities per group.

    Config: ranks (default: every rank some class has), ks (default (1, 5)).
    Inputs: logits [N, C] (already scaled, e.g. CLIP's logit scale times cosine similarity),
      image_labels [N], taxonomy (a `Taxonomy` over the same C classes).
    Metrics: "{rank}/top{k}", "{rank}/top1_from_argmax", "{rank}/num_images", "{rank}/num_groups".
    """

    def __init__(self, config: Mapping[str, Any]):
        self.ranks = tuple(config.get("ranks", ()) or ())
        self.ks = tuple(config.get("ks", (1, 5)))

    def run(self, *, logits, taxonomy: Taxonomy, image_labels=None, labels=None,
            **unused) -> Iterator[tuple[str, Any]]:
        result = rank_accuracy(softmax(logits), _labels(image_labels, labels), taxonomy,
                               self.ranks or None, self.ks)
        for rank, metrics in result.items():
            for name, value in metrics.items():
                yield f"{rank}/{name}", value


@register("chils")
class ChilsEvaluator:
    """CHiLS accuracy against the plain superclass prompts.

    Inputs: sub_logits [N, S], sub_to_parent [S], parent_logits [N, P], image_labels [N]
      (parent ids). Metrics: "superclass_prompts/accuracy", "plain/accuracy",
      "reweighted/accuracy".
    """

    def __init__(self, config: Mapping[str, Any]):
        self.rules = tuple(config.get("rules", CHILS_RULES))

    def run(self, *, sub_logits, sub_to_parent, parent_logits, image_labels=None, labels=None,
            **unused) -> Iterator[tuple[str, Any]]:
        y = _labels(image_labels, labels)
        parent_logits = np.asarray(parent_logits)
        yield "superclass_prompts/accuracy", float(np.mean(np.argmax(parent_logits, -1) == y))
        for rule in self.rules:
            pred, _ = chils_predict(sub_logits, sub_to_parent, parent_logits.shape[-1], parent_logits, rule)
            yield f"{rule}/accuracy", float(np.mean(pred == y))
