"""The FungalZSL wing: CLIP trained on synthetic growth stages, and zero-shot evaluation of any CLIP.

Rani, Arroyo, Durdevic (2025), "FungalZSL: Zero-Shot Fungal Classification with Image Captioning
Using a Synthetic Data Approach". Two trainer modules, each named by a config's ``trainer``:

* :mod:`~fungizsl.fungalzsl.trainer` (``configs/fungalzsl.py``, ``configs/defungi.py``): the
  contrastive training run, its evaluators, summary and export;
* :mod:`~fungizsl.fungalzsl.evaluate` (``configs/evaluate.py``): evaluation only, one or more
  models on one image set, with comparison tables and plots.

What they are built from:

* :mod:`~fungizsl.fungalzsl.model`: the tokenizer and the CLIP model a config's ``model.init``
  names (from scratch, a Hugging Face or open_clip folder, an earlier run);
* :mod:`~fungizsl.fungalzsl.inputs`: a run's images, captions and train/eval iterators;
* :mod:`~fungizsl.fungalzsl.load`: any CLIP folder or FungalZSL run as two embedding functions.

The image sets of evaluation-only runs are data, in :mod:`fungizsl.data.image_sets`. This wing
never imports the FungiCLEF wing (:mod:`fungizsl.fungiclef`).
"""
