"""Recall@K for image->text and text->image retrieval, as reported by FungalZSL.

FungalZSL (Rani, Arroyo, Durdevic 2025) reports Recall@K (K = 1, 5, 10) of a fine-tuned CLIP on
synthetic growth-stage images and LLM-written captions (ViT-L/14@336px reaches Recall@1 of about
0.97). Recall@K of a query is 1 when at least one *relevant* candidate is among its K most
similar candidates, else 0; the metric is its mean over queries. Because FungalZSL's captions
describe a class and not one image, "relevant" has two readings, reported side by side:

* class level: any candidate of the query's class is relevant (image label == text label);
* instance level: only the paired item is relevant. Image i is paired with text `pairs[i]`
  (default: text i, which needs N == M). A text query's relevant images are those paired with
  it (several images may share one caption).

Details, all exact (numpy, float32 cosine similarities):
* Embeddings are L2-normalised here, so unnormalised inputs are fine.
* Ties are broken by candidate index: candidates are ranked by descending similarity and, among
  equal similarities, by ascending index (a stable sort). Rank of a query = 1 + the position of
  its first relevant candidate in that order.
* K larger than the number of candidates is clipped to it (so Recall@K is then 1 for every
  query that has a relevant candidate); the metric keeps the requested K in its name.
* Queries without any relevant candidate (a class with no caption, a caption paired with no
  image) are left out of that average; `num_queries` says how many counted.
* Similarities are computed in chunks of queries, so N x M never has to fit in memory at once.
"""

from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from fungizsl.evaluate.registry import register

DEFAULT_KS = (1, 5, 10)
DIRECTIONS = ("image_to_text", "text_to_image")


def _normalize(x) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def first_relevant_rank(queries, candidates, relevant_fn, chunk: int = 1024) -> np.ndarray:
    """1-based rank of each query's best-ranked relevant candidate; 0 where none is relevant.

    `relevant_fn(query_indices) -> [q, M] bool` gives the relevance rows of a chunk of queries.
    Without sorting: with s* the best relevant similarity and j* its lowest index among equals,
    rank = #{j : s_j > s*} + #{j < j* : s_j == s*} + 1, which is the position of j* in the
    stable descending order.
    """
    queries, candidates = _normalize(queries), _normalize(candidates)
    num_candidates = len(candidates)
    index = np.arange(num_candidates)
    ranks = np.zeros(len(queries), np.int64)
    for start in range(0, len(queries), chunk):
        rows = np.arange(start, min(start + chunk, len(queries)))
        sim = queries[rows] @ candidates.T
        relevant = relevant_fn(rows)
        best = np.where(relevant, sim, -np.inf)
        j_star = np.argmax(best, axis=1)  # lowest index among the equal best relevant ones
        s_star = best[np.arange(len(rows)), j_star][:, None]
        rank = (np.sum(sim > s_star, axis=1)
                + np.sum((sim == s_star) & (index[None, :] < j_star[:, None]), axis=1) + 1)
        ranks[rows] = np.where(relevant.any(axis=1), rank, 0)
    return ranks


def _summarise(ranks: np.ndarray, ks: Sequence[int], num_candidates: int, prefix: str) -> dict:
    counted = ranks[ranks > 0]
    out = {}
    for k in ks:
        k_eff = min(k, num_candidates)
        out[f"{prefix}/recall@{k}"] = float(np.mean(counted <= k_eff)) if len(counted) else float("nan")
    out[f"{prefix}/median_rank"] = float(np.median(counted)) if len(counted) else float("nan")
    out[f"{prefix}/num_queries"] = int(len(counted))
    return out


def recall_at_k(zimg, ztxt, image_labels=None, text_labels=None, pairs=None,
                ks: Sequence[int] = DEFAULT_KS, chunk: int = 1024) -> dict[str, float]:
    """Class-level and instance-level Recall@K in both directions.

    Args:
      zimg: [N, D] image embeddings.   ztxt: [M, D] text embeddings.
      image_labels: [N] class ids; text_labels: [M] class ids. Both or neither; without them the
        class-level metrics are skipped.
      pairs: [N] index of the text paired with each image; default `arange(N)` when N == M.
        Without pairs and N != M the instance-level metrics are skipped.
      ks: the K values (clipped to the number of candidates).
    Returns:
      A flat dict with keys "{level}/{direction}/recall@{K}", ".../median_rank" and
      ".../num_queries", level in ("class", "instance"), direction in DIRECTIONS.
    """
    zimg, ztxt = np.asarray(zimg), np.asarray(ztxt)
    n, m = len(zimg), len(ztxt)
    if zimg.ndim != 2 or ztxt.ndim != 2 or zimg.shape[1] != ztxt.shape[1]:
        raise ValueError(f"zimg [N, D] and ztxt [M, D] must share D; got {zimg.shape}, {ztxt.shape}")
    out: dict[str, float] = {}

    if (image_labels is None) != (text_labels is None):
        raise ValueError("give both image_labels and text_labels, or neither")
    if image_labels is not None:
        image_labels, text_labels = np.asarray(image_labels), np.asarray(text_labels)
        if image_labels.shape != (n,) or text_labels.shape != (m,):
            raise ValueError(f"labels must be [N={n}] and [M={m}], got {image_labels.shape}, "
                             f"{text_labels.shape}")
        i2t = first_relevant_rank(zimg, ztxt, lambda r: image_labels[r, None] == text_labels[None, :], chunk)
        t2i = first_relevant_rank(ztxt, zimg, lambda r: text_labels[r, None] == image_labels[None, :], chunk)
        out.update(_summarise(i2t, ks, m, "class/image_to_text"))
        out.update(_summarise(t2i, ks, n, "class/text_to_image"))

    if pairs is None and n == m:
        pairs = np.arange(n)
    if pairs is not None:
        pairs = np.asarray(pairs).astype(np.int64)
        if pairs.shape != (n,) or (n and (pairs.min() < 0 or pairs.max() >= m)):
            raise ValueError(f"pairs must be [N={n}] text indices in [0, {m})")
        i2t = first_relevant_rank(zimg, ztxt, lambda r: pairs[r, None] == np.arange(m)[None, :], chunk)
        t2i = first_relevant_rank(ztxt, zimg, lambda r: r[:, None] == pairs[None, :], chunk)
        out.update(_summarise(i2t, ks, m, "instance/image_to_text"))
        out.update(_summarise(t2i, ks, n, "instance/text_to_image"))
    return out


def recall_table(metrics: dict[str, float], ks: Sequence[int] = DEFAULT_KS) -> str:
    """Markdown table, one row per (direction, level), one column per K: the two readings side
    by side."""
    header = "| direction | level | " + " | ".join(f"R@{k}" for k in ks) + " |"
    lines = [header, "|" + "---|" * (len(ks) + 2)]
    for direction in DIRECTIONS:
        for level in ("class", "instance"):
            keys = [f"{level}/{direction}/recall@{k}" for k in ks]
            if not any(k in metrics for k in keys):
                continue
            cells = [f"{metrics[k]:.3f}" if k in metrics else "–" for k in keys]
            lines.append(f"| {direction.replace('_', ' ')} | {level} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


@register("retrieval")
class RetrievalEvaluator:
    """Recall@K image->text and text->image, class level and instance level side by side.

    Config:
      ks: K values (default (1, 5, 10); clipped to the number of candidates).
      levels: which of ("class", "instance") to report (default both).
    Metrics: "{level}/{direction}/recall@{K}", ".../median_rank", ".../num_queries"; see
    `recall_at_k` above for the definitions and tie handling.
    """

    def __init__(self, config: Mapping[str, Any]):
        self.ks = tuple(config.get("ks", DEFAULT_KS))
        self.levels = tuple(config.get("levels", ("class", "instance")))
        unknown = set(self.levels) - {"class", "instance"}
        if unknown:
            raise ValueError(f"unknown retrieval levels {sorted(unknown)}")

    def run(self, *, zimg, ztxt, image_labels=None, text_labels=None, pairs=None,
            **unused) -> Iterator[tuple[str, Any]]:
        if "class" not in self.levels:
            image_labels = text_labels = None
        results = recall_at_k(zimg, ztxt, image_labels, text_labels, pairs, self.ks)
        yield from ((k, v) for k, v in results.items() if k.split("/", 1)[0] in self.levels)
