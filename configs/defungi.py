"""FungalZSL's recipe on real microscopy: DeFungi (Sopo, Hajati, Gheisari 2021), five classes.

The images are prepared once as TFDS shards split by source slide (patches of one slide share a
name stem and never straddle splits, unlike the published 5-fold cross-validation):

    fungizsl build image_folder --config defungi --manual-dir /data/defungi --data-dir workdir/tfds
    python -m fungizsl.main --config=configs/defungi.py:runlocal --workdir=workdir/defungi

The text side is a handful of short descriptions per class. The dataset gives only class codes;
these descriptions were written by us from looking at the images, so they describe appearance
(what a zero-shot text encoder could use), not the taxonomy.
"""

from configs import fungalzsl
from configs.common import parse_arg

DESCRIPTIONS = {
    "BASH": ["thin septate hyphae among clusters of small round budding cells",
             "a pale pink field with fine filaments and groups of small yeast-like cells",
             "small round cells in clumps next to slender hyphae"],
    "BBH": ["thick brown pigmented branching hyphae",
            "dark yellow-brown filaments with visible septa on a light background",
            "broad, coloured, branched hyphal filaments"],
    "GMA": ["a dense mass of round cells filling the whole field",
            "many packed spherical cells with clear walls, like a cluster of bubbles",
            "crowded rounded cells without long filaments"],
    "SHC": ["large round thick-walled cells in stained clusters",
            "blue or green stained tissue holding big spherical cells",
            "a few large rounded bodies with thick walls inside stained material"],
    "TSH": ["faint thin hyphae on a grey background",
            "a pale grey field crossed by slender, barely visible filaments",
            "thin transparent septate hyphae with little contrast"],
}


def get_config(arg: str | None = None):
    arg = parse_arg(arg, arch="tiny", tfds_dir="workdir/tfds", tfds_config="defungi", runlocal=False)
    config = fungalzsl.get_config(f"arch={arg.arch},captions=class_descriptions"
                                  + (",runlocal" if arg.runlocal else ""))
    config.trainer = "fungizsl.fungalzsl.trainer"  # the FungalZSL trainer, as configs/fungalzsl.py
    config.data.kind = "tfds"
    config.data.tfds_builder = "image_folder"
    config.data.tfds_dir = arg.tfds_dir
    config.data.tfds_config = arg.tfds_config
    config.data.class_descriptions = DESCRIPTIONS
    config.data.cache_in_memory = False
    config.loss.class_aware = True  # the texts describe a class, never one image
    config.evals.zeroshot.sources = ("class_descriptions",)
    for name in [n for n in config.evals if n.startswith("robust_")]:  # shifted renders of growth stages
        del config.evals[name]
    config.best_metric = "zeroshot/accuracy"
    return config
