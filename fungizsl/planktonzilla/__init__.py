"""Planktonzilla's controlled comparison: supervised classification against CLIP-style training.

Planktonzilla ("Planktonzilla: Multimodal dataset and models for understanding plankton
ecosystems") finds that a supervised classifier on a backbone matches or beats contrastive
image-text training of the same backbone. This package makes the comparison rerunnable on this
project's data:

* :mod:`~fungizsl.planktonzilla.trainer`: the supervised trainer, the FungalZSL image tower plus a
  linear head under softmax cross-entropy, fed by the same inputs, augmentation and budget as
  the FungalZSL trainer (:mod:`fungizsl.fungalzsl.trainer`);
* ``configs/planktonzilla.py``: one config per row of the comparison (data set x objective x text);
* :mod:`~fungizsl.planktonzilla.compare`: the table of finished runs (``fungizsl comparison``, docs/comparison.md).

It builds on the FungalZSL wing (model, inputs, the training loop) and never the other way round.
"""
