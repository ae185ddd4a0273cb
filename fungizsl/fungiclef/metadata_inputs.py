"""An observation's metadata as model inputs, built one way for both FungiCLEF systems.

The metadata-only trainer and the full system's stage 2 read the same things per observation:

* `field_ids` and `numeric`: its categorical fields through a `metadata.FieldVocab` and its
  numeric features (`metadata.numeric_features`);
* the BERT token states of its metadata sentence (`metadata.render_text`), each distinct
  sentence encoded once by the frozen text tower (`text.encode_sentences`): `encode_sentences`
  returns the states of the distinct sentences and, per split, each observation's row in them;
* `prior`: the log-probabilities (float32, a float64 log-softmax of the float64 scores) of the
  count-based metadata prior (`metadata_prior.MetadataPrior`), fitted on training observations;
  a training observation is scored leaving itself out.

Which observations the vocabulary, the prior and the genus table come from stays the caller's
choice: the metadata-only trainer fits on its selection part (genus table from every training
observation) and gives the evaluation split a prior of every training observation; the full
system fits on its `train` split.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from fungizsl.evaluate.calibration import log_softmax
from fungizsl.fungiclef import metadata as md
from fungizsl.fungiclef import text as text_lib
from fungizsl.fungiclef.metadata_prior import MetadataPrior
from fungizsl.fungiclef.tables import ObservationTable, level_of_class


def field_inputs(vocab: md.FieldVocab, records: Sequence[Mapping]) -> dict[str, np.ndarray]:
    """{"field_ids": [N, F] vocabulary ids, "numeric": [N, K] numeric features}."""
    return {"field_ids": vocab.encode(records), "numeric": md.numeric_features(records)}


def fit_prior(config, num_classes: int, table: ObservationTable,
              genus_from: ObservationTable | None = None) -> MetadataPrior:
    """The count prior of `config.data` fitted on `table`'s observations; the genus of each class
    is read from `genus_from` (default: `table`)."""
    d = config.data
    genus = level_of_class(table if genus_from is None else genus_from, num_classes, "genus")
    return MetadataPrior(num_classes, geo_sigma_km=d.prior_geo_sigma_km, genus_weight=d.prior_genus_weight,
                         alpha=d.prior_alpha).fit(table.records, table.labels, genus)


def prior_inputs(prior: MetadataPrior, records: Sequence[Mapping], leave_one_out: bool = False) -> np.ndarray:
    """float32 [N, C]: log-softmax of the prior's scores (leave_one_out: `records` are the fitted
    ones, each scored as if it had not been counted)."""
    return log_softmax(prior.scores(records, leave_one_out=leave_one_out)).astype(np.float32)


def encode_sentences(config, records: Mapping[str, Sequence[Mapping]],
                     show_progress: bool = True) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """(states float16 [S, L, W], mask bool [S, L], {split: int64 [N_split] row of each
    observation's sentence}) for the records of every split; the S distinct sentences are sorted."""
    d, m = config.data, config.model
    sentences = {s: [md.render_text(r, tuple(d.extra_text_fields), d.text_with_year) for r in recs]
                 for s, recs in records.items()}
    unique = sorted({x for v in sentences.values() for x in v})
    states, mask = text_lib.encode_sentences(unique, m.text_model, d.text_max_length, show_progress=show_progress)
    where = {x: i for i, x in enumerate(unique)}
    return states, mask, {s: np.asarray([where[x] for x in v], np.int64) for s, v in sentences.items()}
