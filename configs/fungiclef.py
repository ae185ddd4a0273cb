"""FungiCLEF 2025 few-shot (Lu et al., "Few-Shot Classification of Fungi Species Using Contrastive
Representation Learning and Multimodal Fusion", 2nd place). Examples:

    # metadata only, on the real CSVs (no images needed)
    python -m fungizsl.main --config=configs/fungiclef.py:metadata_only --workdir=runs/meta \\
        --config.data.train_csv=PATH/FungiTastic-FewShot-Train.csv \\
        --config.data.eval_csv=PATH/FungiTastic-FewShot-Val-dev.csv
    # the whole system on the embedded synthetic species set (what ./launch/local.sh fungiclef runs)
    python -m fungizsl.main --config=configs/fungiclef.py:runlocal --workdir=workdir/fungiclef-local

Arguments after the colon:
  metadata_only  stage 2 without images, on config.data.train_csv / eval_csv
  (none)         the full system at the paper's sizes (width 2048, 16 heads; DINOv2 features from
                 config.features.tower); point config.data.tfds_dir at a built fungiclef2025 dataset
                 or config.data.features_dir at a feature cache
  runlocal       the full system, CPU-sized, on the synthetic species set (./launch/local.sh fungiclef)
  paper          the paper's system as it describes it: the metadata sentence only, through BERT
                 (--config.model.text_model=BERT_FOLDER; MiniLM when none is given), the Q-Former
                 fusing text and image in its self-attention, CE classifier, frozen stage 1, stage 1
                 100 epochs, stage 2 100 epochs at batch 1024, and the weighted vote of stage-2 runs
                 trained for 50/100/150 epochs (docs/fungiclef.md: "Where the defaults depart from
                 the paper")
  paper,runlocal the paper's structure, CPU-sized, on the synthetic species set (fewer epochs)
"""

import ml_collections

from configs.common import parse_arg


def _metadata_only(config):
    config.system = "metadata_only"  # a description only: config.trainer names the module that runs
    d = config.data
    d.train_csv = ""
    d.eval_csv = ""
    d.holdout_years = 2  # validation = the latest 2 training years (species that keep an older observation)
    d.fields = ("habitat", "substrate", "metaSubstrate", "landcover", "region", "district",
                "biogeographicalRegion", "countryCode", "month")
    d.extra_text_fields = ()
    d.text_with_year = True
    d.text_max_length = 40
    d.prior_alpha = 0.1
    d.prior_genus_weight = 1.0
    d.prior_geo_sigma_km = 1.0
    m = config.model
    m.use_prior = True
    m.use_text = False
    m.text_model = "minilm"
    m.use_fields = True
    m.use_numeric = True
    m.qformer_width = 64
    m.qformer_depth = 1
    m.qformer_heads = 4
    m.num_queries = 4
    m.dropout = 0.3
    m.dtype = "float32"
    config.batch_size = 256
    config.total_steps = 600
    config.lr = 1e-3
    config.wd = 0.05
    config.warmup_steps = 30
    config.log_every = 50
    config.checkpoint_every = 100
    config.evals.fungiclef = ml_collections.ConfigDict(dict(
        type="fungiclef_observations", split="val", every=100, ks=(1, 5, 10), compare_pooling=False,
        write_submission=True))
    config.best_metric = "fungiclef/top5"
    config.refit_on_all = True  # after selection, train on every training observation for that many steps


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arg = parse_arg(arg, metadata_only=False, runlocal=False, paper=False)
    if arg.paper and arg.metadata_only:
        raise ValueError("config arguments 'paper' and 'metadata_only' exclude each other: paper is the full "
                         "system (images and metadata)")
    config = ml_collections.ConfigDict()
    # the trainer module (fungizsl.main imports it); config.system below only describes the run
    config.trainer = "fungizsl.fungiclef.metadata_only" if arg.metadata_only else "fungizsl.fungiclef.full"
    config.seed = 0
    config.data = ml_collections.ConfigDict(dict(seed=1))
    config.model = ml_collections.ConfigDict()
    config.optim = ml_collections.ConfigDict(dict(grad_clip_norm=1.0, b2=0.999, frozen=(),
                                                  layer_decay=ml_collections.FieldReference(None, field_type=float)))
    config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1))
    config.sharding_rules = ()
    config.keep_checkpoints = 2
    config.final_eval_split = "test"
    config.final_eval_checkpoint = "best"
    config.best_mode = "max"
    config.evals = ml_collections.ConfigDict()
    if arg.metadata_only:
        _metadata_only(config)
        return config
    _full(config, arg.runlocal)
    if arg.paper:
        _paper(config, arg.runlocal)
    return config


def _full(config, runlocal: bool):
    """Features -> stage 1 (DWCL) -> stage 2 (Q-Former with metadata) -> ensemble
    (fungizsl/fungiclef/full.py). Paper: AdamW, lr 2e-4, cosine, batch 1024, 100 epochs,
    width 2048, 16 heads."""
    _metadata_only(config)  # the metadata fields, prior and text settings are shared
    config.system = "full"
    config.preset = "full"  # a description: full | paper (the trainer is the same)
    config.refit_on_all = False
    d = config.data
    d.tfds_dir = ""  # a TFDS data dir holding fungiclef2025/<tfds_config> (features are extracted from it)
    d.tfds_config = "300p"
    d.features_dir = ""  # an existing feature cache; default <workdir>/features
    config.features = ml_collections.ConfigDict(dict(
        tower="", image_size=224, keep="tokens", views=("identity", "hflip"), batch_size=64, shard_size=1024,
        small_steps=300, seed=0))
    config.stage1 = ml_collections.ConfigDict(dict(
        # remat_chunks: the batch is encoded in that many row groups under jax.checkpoint; at the
        # paper's batch 1024 the step needs 87 GB on one device with 1 and 13 GB with 8 (XLA's
        # analysis, `python -m fungizsl.bench.plan`), at about 1.34x the model FLOPs
        loss="dwcl", width=2048, depth=1, heads=16, dtype="float32", remat_chunks=8, temperature=0.07, aux_weight=1.0,
        instances_per_class=4, min_instances=2, view_mixing=True, token_drop=0.25, noise_std=0.1,
        total_steps=3000, batch_size=1024, lr=2e-4, wd=0.05, warmup_steps=100, log_every=50,
        checkpoint_every=500, keep_checkpoints=3, eval_every=500,
        epochs=0, eval_every_epochs=0))  # epochs > 0: total_steps (and eval_every) from the training split
    config.stage2 = ml_collections.ConfigDict(dict(
        total_steps=3000, batch_size=256, lr=2e-4, wd=0.05, warmup_steps=100, log_every=50,
        checkpoint_every=1000, keep_checkpoints=3, eval_every=1000, epochs=0, eval_every_epochs=0,
        frozen=("fusion/visual_encoder/.*",),  # () tunes stage 1 too
        encode_once=True,  # frozen stage 1: its output tokens are computed once, not at every step
        encoded_dir=""))  # where they are kept (memory-mapped) meanwhile; "": the system's temporary folder
    m = config.model
    m.use_visual = True
    m.use_text = True
    m.use_prior = False  # the paper has no count prior; True adds it to the logits
    # Ours, not the paper's: add the stage-1 prototype classifier's scores (learned scale) to the
    # stage-2 logits, so the few-shot classifier starts from what stage 1 already separates.
    m.use_stage1_prototypes = True
    m.qformer_width = 256
    m.qformer_depth = 2
    m.qformer_heads = 8
    m.num_queries = 8
    m.dropout = 0.1
    # "cross": the queries cross-attend to the visual and the metadata tokens, one cross-attention
    # each; "self": the metadata tokens join the queries' self-attention (BLIP-2; the paper)
    m.fusion = "cross"
    config.ensemble = True
    config.ensemble_steps = ()  # () = every kept stage-2 checkpoint of the one run
    # stage-2 epoch counts of separately trained runs to vote instead (the paper: 50, 100, 150);
    # () = the checkpoint ensemble above
    config.ensemble_runs = ()
    config.ensemble_weights = ()  # one weight per member; () = equal, or by ensemble_weight_metric
    config.ensemble_weight_metric = ""  # runs only: weigh each member by its val value of this metric
    config.ensemble_kind = "soft"  # soft: weighted mean of probabilities; hard: weighted Top-1 votes
    config.evals.fungiclef = ml_collections.ConfigDict(dict(
        type="fungiclef_observations", split="val", ks=(1, 5, 10), pooling="mean", compare_pooling=True,
        write_submission=True))
    config.best_metric = "fungiclef/top5"
    if runlocal:  # CPU-sized, on the synthetic species set (64 px images, a self-trained small ViT)
        d.tfds_config = "300p"
        config.features.image_size = 64
        config.features.shard_size = 256
        s1 = config.stage1
        s1.update(width=128, heads=16, remat_chunks=1, total_steps=300, batch_size=128, lr=1e-3, warmup_steps=20,
                  log_every=50, checkpoint_every=100, eval_every=100)
        s2 = config.stage2
        s2.update(total_steps=300, batch_size=128, lr=1e-3, warmup_steps=20, log_every=50,
                  checkpoint_every=100, eval_every=100)
        m.update(qformer_width=64, qformer_depth=1, qformer_heads=4, num_queries=4, dropout=0.1)
        config.mesh.data = -1


# The real training set (FungiTastic-FewShot-Train.csv: 7,819 images of 2,427 classes): the paper
# preset's step counts are this set's until the run recomputes them from its training split
# (fungizsl/fungiclef/ensemble.py: resolve_epochs).
PAPER_TRAIN_IMAGES = 7819
PAPER_SAMPLER_EPOCH_ROWS = 6872  # sum over classes of max(min(n_c, 4), 2): one class-balanced epoch


def _paper(config, runlocal: bool):
    """The paper's system (Lu et al., FungiCLEF 2025) as it describes it. What the paper leaves
    open, and every default of the other presets that departs from it, is in the table "Where the
    defaults depart from the paper" of docs/fungiclef.md."""
    config.preset = "paper"
    d, m = config.data, config.model
    # stage 2's inputs: the sentence "This fungi specimen was collected on [year]-[month]-[day] in a
    # [habitat] area, growing on a [substrate] substrate." (sec. 3.1) through BERT, nothing else
    d.extra_text_fields = ()
    d.text_with_year = True
    m.use_text = True
    # your BERT folder (config.json, model.safetensors, vocab.txt): --config.model.text_model=DIR
    m.text_model = "minilm"
    m.use_fields = False
    m.use_numeric = False
    m.use_prior = False
    m.use_stage1_prototypes = False
    m.fusion = "self"  # text and queries in one self-attention; the queries cross-attend to the image
    # "AdamW ... cosine annealing ... initial learning rate set to 0.0002 and a batch size of 1024"
    # (sec. 4.1); what it leaves open is PyTorch's AdamW default (weight decay 0.01), nothing added:
    # no warm-up, no gradient clipping
    config.optim.grad_clip_norm = 0.0
    s1, s2 = config.stage1, config.stage2
    # 100 epochs (Table 4: the best of 50/100/150). Stage 1: an epoch is one pass of the
    # class-balanced sampler over every class; stage 2: one pass over the training images
    s1.update(epochs=100, eval_every_epochs=25, batch_size=1024, lr=2e-4, wd=0.01, warmup_steps=0)
    s2.update(epochs=100, eval_every_epochs=25, batch_size=1024, lr=2e-4, wd=0.01, warmup_steps=0,
              frozen=("fusion/visual_encoder/.*",))  # stage 1 frozen
    s1.total_steps = -(-100 * PAPER_SAMPLER_EPOCH_ROWS // 1024)  # 672 on the real set
    s2.total_steps = -(-100 * PAPER_TRAIN_IMAGES // 1024)  # 764 on the real set
    s1.eval_every = s1.checkpoint_every = -(-25 * PAPER_SAMPLER_EPOCH_ROWS // 1024)
    s2.eval_every = s2.checkpoint_every = -(-25 * PAPER_TRAIN_IMAGES // 1024)
    # the submission: a weighted vote of models trained for 50, 100 and 150 epochs (sec. 4.3); the
    # 100-epoch member is the headline stage-2 run itself
    config.ensemble = True
    config.ensemble_runs = (50, 100, 150)
    config.ensemble_weights = ()
    config.ensemble_weight_metric = "fungiclef/top5"  # the paper gives no weights: each member's val Top-5
    config.ensemble_kind = "soft"
    if runlocal:  # the same structure at runlocal's sizes (CPU), fewer epochs; steps of the default synthetic set
        s1.update(epochs=40, eval_every_epochs=10, batch_size=128, lr=1e-3, total_steps=312, eval_every=78,
                  checkpoint_every=78)
        s2.update(epochs=20, eval_every_epochs=5, batch_size=128, lr=1e-3, total_steps=227, eval_every=57,
                  checkpoint_every=57)
        config.ensemble_runs = (10, 20, 30)
