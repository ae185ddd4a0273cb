"""Zero-shot classification with a two-tower model, as evaluated in FungalZSL.

FungalZSL (Rani, Arroyo, Durdevic 2025) classifies a fungal growth-stage image (spore, hyphae,
mycelium, ...) by comparing its CLIP image embedding with the text embeddings of LLM-written
class descriptions (CLIP, Radford et al. 2021, https://arxiv.org/abs/2103.00020, section 3.1.4).
Each class may have several descriptions; they are combined by *prompt ensembling*: the mean of
the L2-normalised caption embeddings, renormalised (CLIP's recipe).

The functions here work on embeddings (numpy or jax arrays), so they do not depend on the model
code. `zero_shot_evaluate` is the model-facing wrapper: give it `encode_images(batch) -> [b, D]`
and `encode_texts(list[str]) -> [n, D]` callables and it embeds in batches with a progress bar.

Conventions: argmax ties go to the lowest class index; top-k ranks classes by descending score
with ties broken by lower index (a stable sort); k is clipped to the number of classes.
"""

import os
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
from tqdm.auto import tqdm

from fungizsl.evaluate import plots
from fungizsl.evaluate.registry import register


def l2_normalize(x, axis: int = -1, eps: float = 1e-12) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=axis, keepdims=True), eps)


def class_embeddings(text_embeddings_per_class) -> np.ndarray:
    """Prompt ensemble: one unit vector per class from that class's caption embeddings.

    Args:
      text_embeddings_per_class: a [C, P, D] array, or a sequence of C arrays [P_c, D] (classes
        may have different numbers of captions), or a [C, D] array (one caption per class).
    Returns:
      [C, D] float32: normalise each caption embedding, average per class, renormalise.
    """
    if isinstance(text_embeddings_per_class, np.ndarray) or hasattr(text_embeddings_per_class, "ndim"):
        arr = np.asarray(text_embeddings_per_class, np.float32)
        if arr.ndim == 2:
            return l2_normalize(arr)
        if arr.ndim != 3:
            raise ValueError(f"expected [C, P, D] or [C, D] embeddings, got shape {arr.shape}")
        return l2_normalize(l2_normalize(arr).mean(axis=1))
    per_class = [np.atleast_2d(np.asarray(e, np.float32)) for e in text_embeddings_per_class]
    if any(len(e) == 0 for e in per_class):
        raise ValueError("every class needs at least one caption embedding")
    return l2_normalize(np.stack([l2_normalize(e).mean(axis=0) for e in per_class]))


def group_by_label(text_embeddings, text_labels, num_classes: int) -> list[np.ndarray]:
    """Splits [M, D] caption embeddings into per-class lists, class ids 0..num_classes-1."""
    text_embeddings = np.asarray(text_embeddings, np.float32)
    text_labels = np.asarray(text_labels)
    groups = [text_embeddings[text_labels == c] for c in range(num_classes)]
    missing = [c for c, g in enumerate(groups) if len(g) == 0]
    if missing:
        raise ValueError(f"classes {missing} have no caption embeddings")
    return groups


def zero_shot_predict(zimg, class_emb, scale: float = 1.0) -> np.ndarray:
    """[N, C] logits: scale * cosine similarity of each image with each class embedding."""
    return scale * l2_normalize(zimg) @ l2_normalize(class_emb).T


def top_k_indices(scores, k: int) -> np.ndarray:
    """[N, min(k, C)] class indices by descending score; ties -> lower index first."""
    scores = np.asarray(scores)
    k = min(k, scores.shape[-1])
    return np.argsort(-scores, axis=-1, kind="stable")[..., :k]


def confusion_matrix(labels, predictions, num_classes: int) -> np.ndarray:
    """[C, C] int64 counts; rows are true classes, columns predicted classes."""
    cm = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(cm, (np.asarray(labels), np.asarray(predictions)), 1)
    return cm


def zero_shot_metrics(pred_logits, labels, class_names: Sequence[str],
                      ks: Sequence[int] = (1, 5)) -> dict[str, Any]:
    """Accuracy, per-class accuracy, confusion matrix and top-k accuracy from [N, C] logits.

    Returns a dict:
      accuracy: top-1 accuracy over all N images.
      mean_per_class_accuracy: the mean of per-class accuracies over classes that have images.
      per_class_accuracy: {class_name: accuracy}; NaN for a class with no images.
      top_k: {f"top{k}": accuracy} for each k in ks, k clipped to C (top-k with k >= C is 1.0).
      confusion: [C, C] int64 counts, rows true, columns predicted.
      class_names, num_images.
    """
    logits = np.asarray(pred_logits, np.float32)
    labels = np.asarray(labels).astype(np.int64)
    num_classes = len(class_names)
    if logits.ndim != 2 or logits.shape != (len(labels), num_classes):
        raise ValueError(f"pred_logits must be [N={len(labels)}, C={num_classes}], got {logits.shape}")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got {labels.min()}..{labels.max()}")
    predictions = np.argmax(logits, axis=-1)  # first maximum on ties
    correct = predictions == labels
    cm = confusion_matrix(labels, predictions, num_classes)
    support = cm.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = np.where(support > 0, np.diag(cm) / support, np.nan)
    top_k = {}
    for k in ks:
        hits = (top_k_indices(logits, k) == labels[:, None]).any(axis=-1)
        top_k[f"top{k}"] = float(hits.mean()) if len(labels) else float("nan")
    return {
        "accuracy": float(correct.mean()) if len(labels) else float("nan"),
        "mean_per_class_accuracy": float(np.nanmean(per_class)) if (support > 0).any() else float("nan"),
        "per_class_accuracy": {name: float(a) for name, a in zip(class_names, per_class)},
        "top_k": top_k,
        "confusion": cm,
        "class_names": list(class_names),
        "num_images": int(len(labels)),
    }


def embed_in_batches(encode: Callable[[Any], Any], items, batch_size: int = 64,
                     desc: str = "embedding", progress: bool = True) -> np.ndarray:
    """Applies `encode` to consecutive slices of `items` and concatenates the results.

    `items` is anything sliceable with a length (a numpy array, a list of strings); or an
    iterable of ready-made batches (e.g. a data loader), which is passed through batch by batch.
    """
    if hasattr(items, "__len__") and hasattr(items, "__getitem__"):
        total = len(items)
        batches: Iterable = (items[i:i + batch_size] for i in range(0, total, batch_size))
        num_batches = -(-total // batch_size)
    else:
        batches, num_batches = items, None
    outputs = [np.asarray(encode(b), np.float32)
               for b in tqdm(batches, total=num_batches, desc=desc, disable=not progress, leave=False)]
    if not outputs:
        raise ValueError("nothing to embed")
    return np.concatenate(outputs, axis=0)


def zero_shot_evaluate(encode_images: Callable[[Any], Any], encode_texts: Callable[[list[str]], Any],
                       images, labels, class_prompts: Mapping[str, Sequence[str]],
                       batch_size: int = 64, ks: Sequence[int] = (1, 5),
                       progress: bool = True) -> dict[str, Any]:
    """End-to-end zero-shot evaluation through model-independent callables.

    Args:
      encode_images: batch of images -> [b, D] embeddings (normalised or not).
      encode_texts: list of strings -> [n, D] embeddings.
      images: [N, ...] array (sliced into batches) or an iterable of image batches.
      labels: [N] class ids indexing `class_prompts` in its iteration order.
      class_prompts: {class_name: [caption, ...]}; every class needs at least one caption.
    Returns:
      `zero_shot_metrics(...)` plus "logits" [N, C] and "class_embeddings" [C, D].
    """
    class_names = list(class_prompts)
    captions = [c for name in class_names for c in class_prompts[name]]
    caption_labels = np.repeat(np.arange(len(class_names)), [len(class_prompts[n]) for n in class_names])
    ztxt = embed_in_batches(lambda b: encode_texts(list(b)), captions, batch_size, "captions", progress)
    class_emb = class_embeddings(group_by_label(ztxt, caption_labels, len(class_names)))
    zimg = embed_in_batches(encode_images, images, batch_size, "images", progress)
    logits = zero_shot_predict(zimg, class_emb)
    metrics = zero_shot_metrics(logits, labels, class_names, ks)
    metrics.update(logits=logits, class_embeddings=class_emb)
    return metrics


@register("zeroshot")
class ZeroShotEvaluator:
    """Zero-shot classification: images against prompt-ensembled class embeddings.

    Config (other keys, such as the trainer's `split` or `sources`, are ignored here):
      class_names: names of the class ids 0..C-1. Optional: the trainer may instead pass
        `class_names=` to `run`; without either, classes are named "0".."C-1" with
        C = 1 + the largest label seen.
      ks: top-k accuracies to report (default (1, 5); k is clipped to C).
      plot_dir: if set, writes confusion_matrix.png and per_class_accuracy.png there.
      plot_title: title prefix for the plots (default "Zero-shot").
    Inputs: the caption embeddings `ztxt` with their class ids `text_labels` (several captions
    per class are averaged, CLIP's prompt ensemble); the images `zimg` with `image_labels`.
    Metrics: accuracy, mean_per_class_accuracy, top{k}, per_class/<class name>, confusion ([C, C]
    array, rows true, columns predicted).
    """

    def __init__(self, config: Mapping[str, Any]):
        names = config.get("class_names", None)
        self.class_names = None if names is None else list(names)
        self.ks = tuple(config.get("ks", (1, 5)))
        self.plot_dir = config.get("plot_dir", None)
        self.plot_title = config.get("plot_title", "Zero-shot")

    def run(self, *, zimg, image_labels, ztxt, text_labels, class_names=None,
            **unused) -> Iterator[tuple[str, Any]]:
        names = self.class_names if self.class_names is not None else class_names
        if names is None:
            num_classes = 1 + int(max(np.max(image_labels), np.max(text_labels)))
            names = [str(c) for c in range(num_classes)]
        names = list(names)
        class_emb = class_embeddings(group_by_label(ztxt, text_labels, len(names)))
        logits = zero_shot_predict(zimg, class_emb)
        m = zero_shot_metrics(logits, image_labels, names, self.ks)
        yield "accuracy", m["accuracy"]
        yield "mean_per_class_accuracy", m["mean_per_class_accuracy"]
        yield from m["top_k"].items()
        for name, acc in m["per_class_accuracy"].items():
            yield f"per_class/{name}", acc
        yield "confusion", m["confusion"]
        if self.plot_dir:
            plots.plot_confusion_matrix(m["confusion"], names,
                                        os.path.join(self.plot_dir, "confusion_matrix.png"),
                                        title=f"{self.plot_title} confusion matrix")
            plots.plot_per_class_accuracy(m["per_class_accuracy"],
                                          os.path.join(self.plot_dir, "per_class_accuracy.png"),
                                          title=f"{self.plot_title} per-class accuracy")
