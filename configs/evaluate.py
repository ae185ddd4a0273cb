"""Evaluation without training: one or more models on one dataset (fungizsl.fungalzsl.evaluate).

    python -m fungizsl.main --config=configs/evaluate.py:model=MODEL_DIR,images=CLASS_FOLDER --workdir=DIR
    python -m fungizsl.main --config='configs/evaluate.py:model=runs/a/hf_export;runs/b,images=photos' --workdir=DIR
    python -m fungizsl.main --config=configs/evaluate.py:model=M,tfds=image_folder:defungi:test,tfds_dir=workdir/tfds \\
        --workdir=DIR --config.prompts=descriptions
    # a trained FungiCLEF run (configs/fungiclef.py) per observation on a FungiCLEF CSV
    python -m fungizsl.main --config=configs/evaluate.py:model=runs/meta,fungiclef=PATH/FungiTastic-FewShot-Val-dev.csv \\
        --workdir=DIR
    python -m fungizsl.main --config=configs/evaluate.py:model=workdir/fungiclef-local,fungiclef=CSV,features=CACHE \\
        --workdir=DIR

Arguments after the colon:
  model        Hugging Face CLIP folder, fungizsl workdir or checkpoint step folder; several
               separated by ';' give one comparison table and plot
  images       a class-folder of images (root/<class>/<image>, any size)
  tfds         builder:config:split of a prepared TFDS dataset (instead of images), with tfds_dir
  csv          a CSV listing images (instead of images): image_column, label_column, image_root
               (default <csv folder>/images), e.g. Mushroom Observer's images.csv
  prompts      comma-free list joined by '+': auto | templates | names | lineage | descriptions |
               fungalzsl_generated | fungalzsl_split | <file.jsonl>  (default auto: growth-stage
               templates for spore/hyphae/mycelium..., generic name prompts otherwise)
  taxonomy     CSV with taxonomy columns (FungiCLEF or Mushroom Observer/GBIF) or a JSON/CSV
               taxonomy file: adds the accuracy at every rank (class_column names the label column)
  chils        'phrases' or a .jsonl of {"class": parent, "text": subclass}: adds CHiLS
  descriptions a prompt source (e.g. a .jsonl) for classification by description
  openset      N > 0: hold N classes (seeded) out of the label set and score them as unknowns
  poisonous    class names joined by '+': adds expected-cost decisions (costs in config.evals.decisions.costs)

FungiCLEF runs (fungizsl/fungiclef/evaluate.py; zero-shot arguments above do not apply):
  fungiclef      a FungiTastic-FewShot CSV with labels: model= is then a FungiCLEF workdir (metadata_only
                 or the full system) or one of its step folders; writes Top-1/5/10, macro-F1, poison cost,
                 Top-K at every rank and expected-cost decisions before/after (config.evals.decisions.costs:
                 100 x poisonous called edible, 1 x edible called poisonous, 1 x wrong species), also on
                 probabilities calibrated by a temperature fitted on the run's own validation split
                 (config.evals.decisions.calibrate: temperature | none)
  features       full system: a feature cache holding the CSV's images (matched by filename), made by the
                 run's tower; without it the images (image_root, default the Kaggle layout beside the CSV)
                 go through the run's tower
  features_split the cache's split (default from the CSV's name: Train/Val/Test)
  train_csv      metadata_only: the run's training CSV when it has moved (default: the one the run names)
  run_features   full system: the run's own feature cache when it has moved (default: the one it names)

Any field can be overridden (`--config.batch_size=64`, `--config.data.class_names='("a","b")'`).
"""

import ml_collections

from configs.common import parse_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arg = parse_arg(arg, model="", images="", tfds="", tfds_dir="", csv="", image_column="image_lien",
                    label_column="label", image_root="", prompts="auto", taxonomy="",
                    class_column="", chils="", descriptions="", openset=0, poisonous="", captions_dir="",
                    fungiclef="", features="", features_split="", train_csv="", run_features="")
    config = ml_collections.ConfigDict()
    # A FungiCLEF run is scored per observation by its own wing; any CLIP model zero-shot by FungalZSL's.
    config.trainer = "fungizsl.fungiclef.evaluate" if arg.fungiclef else "fungizsl.fungalzsl.evaluate"
    config.models = tuple(m.strip() for m in arg.model.split(";") if m.strip())
    config.batch_size = 32
    config.ks = (1, 5)
    config.prompts = ",".join(p for p in arg.prompts.split("+") if p)

    config.data = ml_collections.ConfigDict()
    config.data.kind = "fungiclef" if arg.fungiclef else "tfds" if arg.tfds else "csv" if arg.csv else "folder"
    config.data.csv = arg.csv
    config.data.image_column = arg.image_column
    config.data.label_column = arg.label_column
    config.data.image_root = arg.image_root
    config.data.images = arg.images
    builder, config_name, split = (arg.tfds.split(":") + ["", "", ""])[:3] if arg.tfds else ("", "", "")
    if arg.tfds and not (builder and split):
        raise ValueError(f"config argument 'tfds' must be builder:config:split, got {arg.tfds!r}")
    config.data.tfds_builder = builder
    config.data.tfds_config = config_name
    config.data.split = split or "test"
    config.data.tfds_dir = arg.tfds_dir
    config.data.class_names = ()  # empty: the folder names (sorted) or the dataset's label names
    config.data.class_descriptions = {}  # {class: [text, ...]} for the "descriptions" prompt source
    config.data.captions_dir = arg.captions_dir  # FungalZSL caption files, for fungalzsl_* prompts
    config.data.workers = 4  # threads decoding and resizing images
    config.data.fungiclef_csv = arg.fungiclef
    config.data.features = arg.features
    config.data.features_split = arg.features_split
    config.data.train_csv = arg.train_csv
    config.data.run_features = arg.run_features

    config.taxonomy = ml_collections.ConfigDict(dict(path=arg.taxonomy, class_column=arg.class_column))

    config.evals = ml_collections.ConfigDict()
    if arg.taxonomy:
        config.evals.taxonomy = ml_collections.ConfigDict(dict(ks=(1, 5)))
    if arg.chils:
        config.evals.chils = ml_collections.ConfigDict(dict(subclasses=arg.chils))
    if arg.descriptions:
        config.evals.descriptions = ml_collections.ConfigDict(dict(source=arg.descriptions, template="{text}",
                                                                   per_class=0))
    if arg.openset:
        config.evals.openset = ml_collections.ConfigDict(dict(num_unknown=arg.openset, seed=0, tpr=0.95))
    if arg.fungiclef:
        config.ks = (1, 5, 10)
        # calibrate: "temperature" also decides on probabilities scaled by one temperature fitted
        # on the run's own validation split (never on the evaluated CSV) | "none"
        config.evals.decisions = ml_collections.ConfigDict(dict(
            costs=dict(poisonous_as_edible=100.0, edible_as_poisonous=1.0, wrong_species=1.0),
            calibrate="temperature"))
    elif arg.poisonous:
        # zero-shot: no validation split to fit a temperature on, so the rule reads the raw softmax
        config.evals.decisions = ml_collections.ConfigDict(dict(
            poisonous_classes=tuple(c for c in arg.poisonous.split("+") if c),
            costs=dict(poisonous_as_edible=100.0, edible_as_poisonous=1.0, wrong_species=1.0),
            calibrate="none"))
    return config
