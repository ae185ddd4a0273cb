"""The full FungiCLEF system's data: cached image features grouped by observation, with each
observation's metadata inputs.

`load_data` reads the `train`, `val` and `test` splits of a feature cache (`features.py`) into a
`FullData`: per split a `SplitData` of image tokens, the observation each image belongs to, the
observations' labels, padded image groups [N_obs, G] and the first record of each observation,
whose metadata inputs (`metadata_inputs.py`: field ids, numeric features, the count prior's
log-probabilities, the row of its sentence in the shared text states) come from `data_from_splits`.
The vocabulary, the prior and the poisonous flags come from the `train` split.

Also here: what the batch builders and scorers of both stages share (`grain_iterator`, `chunks`,
`pad_rows`), and the inputs the `fungiclef_observations` evaluator gets beside the logits
(`obs_inputs`, `image_to_obs`).
"""

from __future__ import annotations

import dataclasses

import grain
import numpy as np

from fungizsl.fungiclef import features as feat_lib
from fungizsl.fungiclef import metadata as md
from fungizsl.fungiclef import metadata_inputs as inputs_lib
from fungizsl.fungiclef import tables

SPLITS = ("train", "val", "test")


@dataclasses.dataclass
class SplitData:
    tokens: np.ndarray  # float16 [N_img, V, T, D]
    image_obs: np.ndarray  # int [N_img]: position of the image's observation
    labels: np.ndarray  # int [N_img]
    obs_ids: np.ndarray  # int64 [N_obs]
    obs_labels: np.ndarray  # int [N_obs]
    groups: np.ndarray  # int [N_obs, G] image positions, -1 padding
    records: list  # metadata dict per observation
    inputs: dict  # per-observation metadata model inputs
    image_inputs: dict = dataclasses.field(default_factory=dict)  # per-image inputs (stage-1 prototype scores)
    encoded: np.ndarray | None = None  # float16 [N_img, V, 1 + T, W]: the frozen stage-1 encoder's tokens

    @property
    def stage2_tokens(self) -> np.ndarray:
        """What stage 2 reads per image and view: the frozen stage-1 encoder's output tokens when
        they were computed (`stage1.stage1_tokens`), else the tower's tokens."""
        return self.tokens if self.encoded is None else self.encoded


@dataclasses.dataclass
class FullData:
    splits: dict[str, SplitData]
    num_classes: int
    field_sizes: tuple[int, ...]
    poisonous: np.ndarray
    tower: str
    first_kept: int  # tower CLS + registers: tokens that feature augmentation never drops
    text_states: np.ndarray | None  # float16 [num_sentences, L, W]
    text_mask: np.ndarray | None


def _group(loaded: dict):
    order: dict[int, int] = {}
    image_obs = np.asarray([order.setdefault(int(o), len(order)) for o in loaded["observation_id"]])
    n_obs = len(order)
    members = [[] for _ in range(n_obs)]
    for i, o in enumerate(image_obs):
        members[o].append(i)
    width = max(len(m) for m in members)
    groups = np.full((n_obs, width), -1, np.int64)
    for o, m in enumerate(members):
        groups[o, :len(m)] = m
    first = groups[:, 0]
    return (image_obs, np.asarray(list(order), np.int64), loaded["category_id"][first].astype(np.int64), groups,
            [loaded["metadata"][i] for i in first])


def load_data(config, features_dir, show_progress: bool = True) -> FullData:
    return data_from_splits(config, {s: feat_lib.load_split(features_dir, s) for s in SPLITS}, show_progress)


def data_from_splits(config, loaded: dict, show_progress: bool = True, num_classes: int | None = None) -> FullData:
    """Model inputs of every split in `loaded` ({split: `features.load_split` dict}; "train" is
    required: the vocabulary, the prior, the prototypes and the label space come from it).
    `num_classes` (default: 1 + the largest training label) is given when a trained model scores new data (`fungiclef/scoring.py`)."""
    d, m = config.data, config.model
    splits = {}
    for s, x in loaded.items():
        image_obs, obs_ids, obs_labels, groups, records = _group(x)
        splits[s] = SplitData(x["tokens"], image_obs, x["category_id"].astype(np.int64), obs_ids, obs_labels,
                              groups, records, {})
    train = splits["train"]
    if num_classes is None:  # the training labels only: a species seen only in val/test has no output
        num_classes = int(train.labels.max()) + 1
    table = tables.ObservationTable(train.records, train.obs_ids, train.obs_labels)
    vocab = md.FieldVocab.build(train.records, tuple(d.fields))
    prior = inputs_lib.fit_prior(config, num_classes, table)
    text_states = text_mask = None
    if m.use_text:
        text_states, text_mask, sentence = inputs_lib.encode_sentences(
            config, {s: sp.records for s, sp in splits.items()}, show_progress)
    for s, sp in splits.items():
        sp.inputs = inputs_lib.field_inputs(vocab, sp.records)
        sp.inputs["prior"] = inputs_lib.prior_inputs(prior, sp.records, leave_one_out=s == "train")
        if m.use_text:
            sp.inputs["sentence"] = sentence[s]
    info = loaded["train"]
    registers = info["num_registers"]
    return FullData(splits, num_classes, vocab.sizes(), tables.poisonous_by_class(table, num_classes),
                    info["tower"], 1 + registers, text_states, text_mask)


# -------------------------------------------------------------------------------------------------
# Shared by the batch builders and scorers of both stages
# -------------------------------------------------------------------------------------------------

def grain_iterator(transform: grain.transforms.Map, steps: int):
    """Steps 0..steps through `transform` (random access by step, so the Grain iterator state
    resumes exactly)."""
    return iter(grain.MapDataset.range(steps + 1).map(transform).to_iter_dataset())


def chunks(n: int, size: int):
    for start in range(0, n, size):
        yield start, min(n, start + size)


def pad_rows(x: np.ndarray, size: int) -> np.ndarray:
    return np.concatenate([x, np.repeat(x[-1:], size - len(x), 0)]) if len(x) < size else x


def obs_inputs(data: FullData, split: str) -> dict:
    """The `fungiclef_observations` evaluator's inputs of a split besides the logits: image mask,
    labels, ids, poisonous flags, the raw tower features for the organisers' baselines and the
    count prior for the metadata baseline."""
    sp = data.splits[split]
    mask = sp.groups >= 0
    # The tower's CLS, views averaged, per observation: sliced [N_img, V, D] before the gather by
    # observation, which would otherwise copy every token ([N_obs, G, V, T, D]) to keep one.
    raw = sp.tokens[:, :, 0][np.maximum(sp.groups, 0)].astype(np.float32).mean(2)
    train = data.splits["train"]
    return dict(image_mask=mask, labels=sp.obs_labels, observation_ids=sp.obs_ids, poisonous_by_class=data.poisonous,
                raw_features=raw, train_raw_features=train.tokens[:, :, 0].astype(np.float32).mean(1),
                train_raw_labels=train.labels, metadata_scores=sp.inputs["prior"])


def image_to_obs(image_logits: np.ndarray, groups: np.ndarray) -> np.ndarray:
    return image_logits[np.maximum(groups, 0)]  # [N_obs, G, C]; padding masked by image_mask
