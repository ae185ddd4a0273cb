"""Planktonzilla's controlled comparison: one row per config (data set x objective x text).

    python -m fungizsl.main --config=configs/planktonzilla.py:data=growth,objective=supervised,runlocal \\
        --workdir=runs/pz-growth-supervised
    python -m fungizsl.main --config=configs/planktonzilla.py:data=growth,objective=clip,text=names,runlocal \\
        --workdir=runs/pz-growth-names
    fungizsl comparison runs/pz-*      # the table (docs/comparison.md)

Arguments after the colon:
  data       growth (the rendered growth stages of configs/fungalzsl.py) | defungi (configs/defungi.py,
             split by source slide; needs `fungizsl build image_folder` first, see that file)
             | species (FungiCLEF's synthetic species as class folders: `fungizsl species-folders
             --out workdir/species` first; species_dir names another folder)
  objective  supervised (fungizsl.planktonzilla.trainer: image tower + linear head, cross-entropy)
             | clip (the FungalZSL trainer: contrastive image-text loss)
  text       for objective=clip: names (growth: hand-written prompt templates around the stage
             name; defungi: its class codes in the generic name prompts; species: the species name) | descriptions (growth: each image's own scene
             caption, the main job's text; defungi: the appearance descriptions written into
             configs/defungi.py; species: its look in words) | lineage (species only: kingdom to
             species, as the CSVs record it)
  arch, runlocal, tfds_dir  as in the base config (arch defaults to cnn_tiny, the 2-core tower)

Controlled: within one data set every row has the same tower, initialisation, images, splits,
augmentation, batch, steps, learning rate and schedule, and chooses its checkpoint by its own val
accuracy (the head's argmax, or zero-shot with the training text's prompts) before testing once.
Taxonomic lineage as text needs classes with a taxonomy: only the species have one. The species'
held-out classes (`<species_dir>/new_classes`) measure what only a text-trained model can do,
name classes it never saw: after a CLIP-style run,

    python -m fungizsl.main --config=configs/evaluate.py:model=RUN,images=workdir/species/new_classes,prompts=workdir/species/texts/lineage.jsonl \
        --workdir=RUN/new_classes

(its own training text's file as prompts) and `fungizsl comparison` shows it beside the run.
"""

import ml_collections

from configs import defungi, fungalzsl
from configs.common import parse_arg
from fungizsl.fungalzsl.evaluate import NAME_TEMPLATES

OBJECTIVES = ("supervised", "clip")
TEXTS = {"growth": {"names": "templates", "descriptions": "scene"},
         "defungi": {"names": "class_descriptions", "descriptions": "class_descriptions"},
         "species": {"names": "names", "lineage": "lineage", "descriptions": "descriptions"}}
SPECIES_SIZE = 64  # fungizsl species-folders' default image side


def _supervised_evals(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The base config's evaluators for a supervised head: each zero-shot entry becomes a
    ``classify`` entry on the same split and schedule (the first one named ``classify``),
    retrieval (needs text) is dropped."""
    evals = ml_collections.ConfigDict()
    for name, cfg in config.evals.items():
        if cfg.type == "zeroshot":
            evals["classify" if name == "zeroshot" else name] = ml_collections.ConfigDict(
                dict(type="classify", split=cfg.split, every=cfg.every))
    return evals


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arg = parse_arg(arg, data="growth", objective="supervised", text="descriptions", arch="cnn_tiny",
                    runlocal=False, tfds_dir="workdir/tfds", species_dir="workdir/species")
    if arg.data not in TEXTS:
        raise ValueError(f"config argument 'data' must be one of {sorted(TEXTS)}, got {arg.data!r}")
    if arg.objective not in OBJECTIVES:
        raise ValueError(f"config argument 'objective' must be one of {OBJECTIVES}, got {arg.objective!r}")
    if arg.text not in TEXTS[arg.data]:
        raise ValueError(f"config argument 'text' must be one of {sorted(TEXTS[arg.data])}, got {arg.text!r}")
    local = ",runlocal" if arg.runlocal else ""
    if arg.data == "growth":
        captions = TEXTS["growth"][arg.text] if arg.objective == "clip" else "scene"
        config = fungalzsl.get_config(f"arch={arg.arch},captions={captions}{local}")
        # the main job's recipe when the table was measured (before its randomised renders), for every row
        config.data.augment = "microscopy_whole_field"
        config.data.randomised = False
        config.loss.class_aware = True  # as the main job (scene captions with class-aware pairs)
    elif arg.data == "species":  # class folders and texts written by `fungizsl species-folders`
        text = TEXTS["species"][arg.text if arg.objective == "clip" else "names"]
        config = fungalzsl.get_config(f"arch={arg.arch},captions={arg.species_dir}/texts/{text}.jsonl{local}")
        config.data.kind = "folders"
        config.data.folders = arg.species_dir
        config.data.image_size = SPECIES_SIZE
        config.data.augment = "microscopy"  # every row: crops and flips, as for class-level texts
        config.evals.zeroshot.sources = (config.data.captions,)
        for name in [n for n in config.evals if n.startswith(("robust_", "val_"))]:  # growth-stage renders
            del config.evals[name]
    else:
        config = defungi.get_config(f"arch={arg.arch},tfds_dir={arg.tfds_dir}{local}")
        if arg.objective == "clip":
            config.data.captions = "class_descriptions"
            config.evals.zeroshot.sources = (config.data.captions,)
        if arg.objective == "clip" and arg.text == "names":  # the class codes in generic name prompts
            config.data.class_descriptions = {c: [t.format(c) for t in NAME_TEMPLATES] for c in defungi.DESCRIPTIONS}
    if arg.runlocal:  # the table's budget for every row: 2,000 steps of 32 (docs/comparison.md)
        config.total_steps, config.eval_every = 2000, 1000
    config.comparison = ml_collections.ConfigDict(dict(
        data=arg.data, objective=arg.objective, text=arg.text if arg.objective == "clip" else "none"))
    if arg.objective == "supervised":
        config.trainer = "fungizsl.planktonzilla.trainer"
        config.evals = _supervised_evals(config)
        config.best_metric = "classify/accuracy"
        config.loss.label_smoothing = 0.0
        config.export_hf = False  # a classifier, not a CLIP: nothing to export
    return config
