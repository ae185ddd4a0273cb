"""FungiCLEF full-system runs shared by the tests, and the plain-numpy arithmetic that checks
their numbers.

* `TINY_SPECIES`, `tiny_full_config`: a tiny synthetic species set and the full system shrunk to
  seconds on a CPU (4 steps per stage).
* `shared_full_run`: the one full-system run the test session trains (`RUN_SPECIES`,
  `run_config`), once per process, for every test that reads a trained run
  (test_fungiclef_full.py, test_evaluate_fungiclef.py): long enough for stage 1 to learn, so its
  numbers can be compared with the organisers' raw-feature baselines.
* `observation_labels`, `submission_metrics`, `raw_baseline_top_k`: the summary's numbers worked
  out again from what a run writes (its Kaggle submissions, its feature cache) with plain numpy,
  from the definitions, never with the evaluator's code.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib

import numpy as np

from fungizsl.fungiclef import synthetic_species as syn

TINY_SPECIES = syn.SpeciesSetConfig(num_species=12, species_per_genus=3, image_size=32, val_fraction=0.6,
                                    test_fraction=0.8, seed=3)
# the shared run's set: 48 species, 215 training images (93 observations), 31 val and 34 test observations
RUN_SPECIES = dataclasses.replace(TINY_SPECIES, num_species=48)


def tiny_full_config(tfds_dir):
    """configs/fungiclef.py:runlocal shrunk to 32 px, a 3-step tower and 4 steps per stage."""
    from configs import fungiclef as fungiclef_config

    config = fungiclef_config.get_config("runlocal")
    config.data.tfds_dir = str(tfds_dir)
    f = config.features
    f.image_size, f.small_steps, f.shard_size, f.batch_size = 32, 3, 16, 16
    for stage in (config.stage1, config.stage2):
        stage.update(total_steps=4, batch_size=16, warmup_steps=1, log_every=2, checkpoint_every=2, eval_every=2)
    config.stage1.width = 32
    config.stage1.heads = 4
    config.model.qformer_width = 32
    config.data.text_max_length = 24
    return config


def run_config(tfds_dir):
    """`tiny_full_config` trained long enough to learn: stage 1 300 steps of 32 rows (about 45
    passes over the 215 training images), checkpoints (and validation) every 100; stage 2 100
    steps of 16, every 50 (the ensemble votes steps 50 and 100)."""
    config = tiny_full_config(tfds_dir)
    config.stage1.update(total_steps=300, batch_size=32, log_every=100, checkpoint_every=100, eval_every=100)
    config.stage2.update(total_steps=100, log_every=50, checkpoint_every=50, eval_every=50)
    return config


@dataclasses.dataclass
class SharedRun:
    root: object  # pathlib.Path: download/ (the Kaggle layout), tfds/, run/ (the workdir)
    summary: dict  # what train_and_evaluate returned

    @property
    def run(self):
        return self.root / "run"


_SHARED: dict = {}


def shared_full_run(tmp_path_factory) -> SharedRun:
    """The full system (features -> stage 1 -> stage 2 -> ensemble) on `RUN_SPECIES`, trained the
    first time a test of the session asks for it (about a minute and a half on 2 CPU cores)."""
    if "run" not in _SHARED:
        from fungizsl.data import builders
        from fungizsl.fungiclef import full as fungiclef_full

        root = tmp_path_factory.mktemp("fungiclef_shared_run")
        counts = syn.write_species_set(root / "download", RUN_SPECIES, show_progress=False)
        builders.build("fungiclef2025", "300p", data_dir=root / "tfds", manual_dir=root / "download")
        summary = fungiclef_full.train_and_evaluate(run_config(root / "tfds"), root / "run")
        (root / "counts.json").write_text(json.dumps(counts))
        _SHARED["run"] = SharedRun(root, summary)
    return _SHARED["run"]


# -------------------------------------------------------------------------------------------------
# A run's numbers from first principles
# -------------------------------------------------------------------------------------------------

def observation_labels(split_features: dict) -> dict[int, int]:
    """{observation id: species} of a `features.load_split` dict."""
    out: dict[int, int] = {}
    for o, c in zip(split_features["observation_id"], split_features["category_id"]):
        assert out.setdefault(int(o), int(c)) == int(c), f"observation {o} has two species"
    return out


def poisonous_flags(train_features: dict) -> dict[int, int]:
    """{species: 0/1} from the training images' metadata (a species absent from training: unknown)."""
    return {int(m["category_id"]): int(m["poisonous"]) for m in train_features["metadata"]}


def metrics_from_rankings(rankings: dict[int, list[int]], labels: dict[int, int], flags: dict[int, int],
                          ks=(1, 5, 10)) -> dict[str, float]:
    """Top-k, macro-F1 over the labels' species and the poison cost (100 per poisonous species
    called edible, 1 per edible called poisonous, over N; unknown flags cost nothing) of
    {observation: classes best first}."""
    obs_ids = sorted(labels)
    assert set(rankings) == set(obs_ids), "the rankings and the labels name other observations"
    n = len(obs_ids)
    out = {f"top{k}": sum(labels[o] in rankings[o][:k] for o in obs_ids) / n for k in ks}
    pred = {o: rankings[o][0] for o in obs_ids}
    f1 = []
    for c in sorted(set(labels.values())):
        tp = sum(pred[o] == c and labels[o] == c for o in obs_ids)
        fp = sum(pred[o] == c and labels[o] != c for o in obs_ids)
        fn = sum(pred[o] != c and labels[o] == c for o in obs_ids)
        f1.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    out["macro_f1"] = sum(f1) / len(f1)
    cost = 0
    for o in obs_ids:
        truth, guess = flags.get(labels[o], -1), flags.get(pred[o], -1)
        cost += 100 if (truth, guess) == (1, 0) else 1 if (truth, guess) == (0, 1) else 0
    out["poison_cost"] = cost / n
    out["num_observations"] = n
    return out


def read_rankings(path) -> dict[int, list[int]]:
    """A Kaggle submission CSV, read with plain string handling: {observation id: classes}."""
    lines = pathlib.Path(path).read_text().splitlines()
    assert lines[0] == "observationId,predictions", lines[0]
    out = {}
    for line in lines[1:]:
        obs, preds = line.split(",")
        out[int(obs)] = [int(c) for c in preds.split()]
    return out


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def raw_baseline_rankings(train: dict, split: dict, kind: str, scale: float = 30.0) -> dict[int, list[int]]:
    """The organisers' baselines on the raw tower features, from their definition: an image's
    feature is its CLS token averaged over the views; `prototype` scores scale x the cosine to
    each species' prototype (the mean of its unit training features), `nearest_neighbour` scale x
    the cosine of the species' most similar training image; an observation's probabilities are the
    mean of its images' softmax. {observation id: the 10 best species, best first}."""
    cls = lambda s: s["tokens"][:, :, 0].astype(np.float64).mean(1)
    t, labels = _unit(cls(train)), train["category_id"]
    species = np.unique(labels)
    f = _unit(cls(split))
    sims = f @ t.T
    num_classes = int(labels.max()) + 1
    logits = np.full((len(f), num_classes), -scale)
    for c in species:
        if kind == "prototype":
            logits[:, c] = scale * (f @ _unit(t[labels == c].sum(0)))
        elif kind == "nearest_neighbour":
            logits[:, c] = scale * sims[:, labels == c].max(1)
        else:
            raise ValueError(kind)
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    out = {}
    for o in np.unique(split["observation_id"]):
        p = probs[split["observation_id"] == o].mean(0)
        out[int(o)] = sorted(range(num_classes), key=lambda c: (-p[c], c))[:10]
    return out
