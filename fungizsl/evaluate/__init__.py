"""Evaluators as small plug-ins, in the style of big_vision, for FungalZSL's and FungiCLEF's metrics.

Each evaluator is a class built from its config (an `ml_collections.ConfigDict` or a plain dict)
whose `run(**inputs)` yields `(metric_name, value)` pairs. Evaluators consume *precomputed*
arrays, so they do not depend on the model code; a trainer's `Task.evaluate` (see
`fungizsl.train.core`) computes the inputs of a split once and hands the same keyword arguments
to every evaluator configured for that split. An evaluator takes the keywords it needs and must
accept (and ignore) the others via `**unused`.

Inputs (keyword names are the contract; N images, M texts, C classes, B observations of at most
G images each):

    zimg [N, D], image_labels [N], ztxt [M, D], text_labels [M], pairs [N] (optional),
    class_names (list of C names)                                    -- FungalZSL: zero-shot, Recall@K
    logits [B, G, C], image_mask [B, G] (bool, False on padding),
    labels [B], observation_ids [B], valid [B] (bool, False on padded observations)
                                                                     -- FungiCLEF: Top-K per observation

Configs live under `config.evals.<name>`; the key "type" picks the class (default: the name), so
two evaluations of one kind can sit side by side. The trainer core reads two more keys of every
entry, which evaluators ignore: `split` (the split it runs on during training, e.g. "val"; every
entry runs once more at the end on `config.final_eval_split`, "test") and `every` (steps between
runs; 0 = only the final pass):

    config.evals.zeroshot = dict(type="zeroshot", split="val", every=500, class_names=[...])
    config.evals.retrieval_gpt4o = dict(type="retrieval", split="val", every=500, ks=(1, 5, 10))
    for name, value in registry.run_evaluators(config.evals, zimg=..., image_labels=..., ztxt=..., text_labels=...):
        writer.add_scalar(name, value, step)      # names are "<eval name>/<metric>"

Values are Python floats/ints except where a metric is an array (the confusion matrix); the
`fungizsl.metrics_io` writers skip non-scalars for TensorBoard and keep them in JSON. Plots are
written through etils.epath (`plot_dir` may be `gs://...`).

Layout: `registry.py` (register, get_evaluator, make_evaluator, run_evaluators) and one evaluator
per module: zeroshot, retrieval, observations (FungiCLEF), descriptions, openset, decisions,
taxonomy (taxonomy and chils); helpers: calibration, plots, crosstable. New evaluators join with
`@registry.register("name")`. This file imports nothing.
"""
