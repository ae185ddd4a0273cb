"""Classification by description: class scores from several descriptor sentences per class.

Two published ways of turning many descriptions of a class into one zero-shot classifier, and the
plain-prompt baseline they are compared with:

* **mean similarity** (Menon & Vondrick, ICLR 2023, "Visual Classification via Description from
  Large Language Models", https://arxiv.org/abs/2210.07183): the score of class c is the mean,
  over its descriptors d, of the cosine similarity between the image and the text of d;
* **mean embedding** (CuPL, Pratt et al., ICCV 2023, "What does a platypus look like?",
  https://arxiv.org/abs/2209.03320; also CLIP's prompt ensembling): the class embedding is the
  mean of the normalised description embeddings, renormalised, and the score is its cosine
  similarity with the image;
* **prompts**: the same with a few generic prompts (templates or the class name) instead of
  descriptions.

With e_d the unit descriptor embeddings of class c and m_c their mean, mean similarity is
<z, m_c> and mean embedding is <z, m_c> / |m_c|: they differ only by |m_c|, which is small for a
class whose descriptions point in many directions. Mean similarity penalises such classes, mean
embedding does not; which is better is an empirical question this module lets one ask per
caption source.

Descriptors come from a JSONL file of {"class", "text"} lines (e.g. written by
`fungizsl captions generate`, `fungizsl.data.llm_captions`) or any caption source of
`fungizsl.data.captions`; `descriptors_by_class` reads them.
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from fungizsl.data import captions as caption_lib
from fungizsl.evaluate.registry import register
from fungizsl.evaluate.zeroshot import class_embeddings, l2_normalize

METHODS = ("mean_similarity", "mean_embedding")


def mean_similarity_scores(zimg, descriptor_embeddings: Sequence) -> np.ndarray:
    """[N, C]: mean cosine similarity of each image with each class's descriptors.

    descriptor_embeddings: C arrays [P_c, D] (classes may have different counts).
    """
    z = l2_normalize(zimg)
    cols = []
    for c, e in enumerate(descriptor_embeddings):
        e = np.atleast_2d(np.asarray(e, np.float32))
        if len(e) == 0:
            raise ValueError(f"class {c} has no descriptor embeddings")
        cols.append((z @ l2_normalize(e).T).mean(axis=1))
    return np.stack(cols, axis=1)


def mean_embedding_scores(zimg, descriptor_embeddings: Sequence) -> np.ndarray:
    """[N, C]: cosine similarity with the renormalised mean of each class's descriptors."""
    return l2_normalize(zimg) @ class_embeddings(list(descriptor_embeddings)).T


def scores(zimg, descriptor_embeddings: Sequence, method: str) -> np.ndarray:
    if method == "mean_similarity":
        return mean_similarity_scores(zimg, descriptor_embeddings)
    if method == "mean_embedding":
        return mean_embedding_scores(zimg, descriptor_embeddings)
    raise ValueError(f"unknown description method {method!r}; methods: {METHODS}")


def descriptors_by_class(source, class_names: Sequence[str], template: str = "{text}",
                         per_class: int | None = None) -> dict[str, list[str]]:
    """{class: [descriptor sentence, ...]} for `class_names` from a caption source, a JSONL path
    or a ready dict. `template` may use {cls} and {text} (Menon & Vondrick write
    "{cls}, which has {text}"); `per_class` keeps the first that many. Every class needs one."""
    if isinstance(source, Mapping):
        by_class = {k: list(v) for k, v in source.items()}
    elif isinstance(source, str):
        by_class = caption_lib.JsonlSource(source).by_class()
    else:
        by_class = source.by_class()
    missing = [c for c in class_names if not by_class.get(c)]
    if missing:
        raise ValueError(f"no descriptors for classes {missing} (have: {sorted(by_class)[:10]})")
    return {c: [template.format(cls=c.replace("_", " "), text=t) for t in by_class[c][:per_class]]
            for c in class_names}


@register("descriptions")
class DescriptionsEvaluator:
    """Accuracy of classification by description, by method, next to plain prompts.

    Config: methods (default both of METHODS).
    Inputs: zimg [N, D], image_labels [N], descriptor_embeddings (C arrays [P_c, D]),
      prompt_embeddings (optional, C arrays: the plain-prompt baseline, prompt-ensembled).
    Metrics: "{method}/accuracy", "{method}/mean_per_class_accuracy", and "prompts/..." when
      prompt embeddings are given.
    """

    def __init__(self, config: Mapping[str, Any]):
        self.methods = tuple(config.get("methods", METHODS))

    def run(self, *, zimg, descriptor_embeddings, image_labels=None, labels=None,
            prompt_embeddings=None, **unused) -> Iterator[tuple[str, Any]]:
        y = np.asarray(image_labels if image_labels is not None else labels).astype(np.int64)
        results = {m: scores(zimg, descriptor_embeddings, m) for m in self.methods}
        if prompt_embeddings is not None:
            results["prompts"] = mean_embedding_scores(zimg, prompt_embeddings)
        for name, s in results.items():
            pred = np.argmax(s, axis=-1)
            yield f"{name}/accuracy", float(np.mean(pred == y))
            per_class = [np.mean(pred[y == c] == c) for c in range(s.shape[1]) if np.any(y == c)]
            yield f"{name}/mean_per_class_accuracy", float(np.mean(per_class))
