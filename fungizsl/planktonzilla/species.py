"""The FungiCLEF synthetic species as class folders, with three texts per species, for the comparison.

    fungizsl species-folders --out workdir/species [--species 300] [--size 64] [--new_classes 0.2] [--seed 0]

Renders the synthetic few-shot species set of :mod:`fungizsl.fungiclef.synthetic_species` (its own
splits: training years, the validation year, the test year; all images of an observation stay in
its split) into ``<out>/kaggle`` and writes, beside it:

* ``<out>/{train,val,test}/<species>/<image>``: the species seen in training, in the set's splits
  (``config.data.kind="folders"``; the folder name is the species name with ``_`` for the space);
* ``<out>/new_classes/<species>/<image>``: held-out species (a fraction drawn with the data seed),
  every image of theirs: never trained on, never used to choose; the "unseen classes" column of
  the comparison is zero-shot among them only (``configs/evaluate.py:images=<out>/new_classes``);
* ``<out>/texts/{names,lineage,descriptions}.jsonl``: ``{"class", "text"}`` for every species:
  its name; its lineage as the CSVs record it (kingdom, phylum, class, order, family, genus,
  species); its look in words (cap shape, colour, width, gills, spots, ring, stem), written from
  the parameters it was drawn with, so the text describes what the images show;
* ``<out>/species.json``: counts per folder, the held-out species, the seeds.
"""

from __future__ import annotations

import argparse
import csv
import json

import numpy as np
from etils import epath

from fungizsl.fungiclef import synthetic_species as synth

TEXTS = ("names", "lineage", "descriptions")
SPLITS = ("train", "val", "test")
NEW_CLASSES = "new_classes"
HUES = ((0.04, "red"), (0.10, "orange"), (0.16, "ochre"), (0.21, "yellow"), (0.45, "green"), (0.55, "teal"),
        (0.70, "blue"), (0.80, "violet"), (0.92, "purple"), (1.01, "pink-red"))


def folder_name(species: str) -> str:
    return species.replace(" ", "_")


def colour_words(hue: float, sat: float, val: float) -> str:
    """A colour phrase for an HSV colour: a hue name, made pale, greyish or dark where it is."""
    name = next(word for bound, word in HUES if hue % 1.0 < bound)
    if val < 0.55:
        return f"dark {name}"
    if sat < 0.4:
        return f"pale greyish {name}"
    return f"pale {name}" if sat < 0.55 else f"bright {name}" if sat > 0.8 and val > 0.8 else name


def describe(look: dict) -> str:
    """One sentence of what a species' drawn parameters make its mushrooms look like."""
    width = "broad " if look["cap_w"] > 0.65 else "narrow " if look["cap_w"] < 0.52 else ""
    stem = ("a tall slender stem" if look["stem_h"] > 0.4 and look["stem_w"] < 0.12 else
            "a short thick stem" if look["stem_h"] < 0.32 and look["stem_w"] > 0.12 else
            "a tall stem" if look["stem_h"] > 0.4 else "a short stem" if look["stem_h"] < 0.32 else "a stem")
    return (f"a mushroom with a {width}{synth.SHAPES[look['shape']]} "
            f"{colour_words(look['hue'], look['sat'], look['val'])} cap, "
            f"{'spotted' if look['spots'] > 0.5 else 'smooth'}, with {look['gills']} gills, "
            f"{'a ring on ' if look['ring'] > 0.5 else 'no ring on '}{stem}")


def lineage(row: dict) -> str:
    return " ".join(row[k] for k in ("kingdom", "phylum", "class", "order", "family", "genus")) + \
        f" {row['species']}"


def write_species_folders(out_dir, config: synth.SpeciesSetConfig = synth.SpeciesSetConfig(),
                          new_classes: float = 0.2, show_progress: bool = True) -> dict:
    """Renders the set and writes the folders and texts above; returns what species.json holds."""
    if not 0 <= new_classes < 1:
        raise ValueError(f"new_classes is a fraction of the species in [0, 1), got {new_classes}")
    out = epath.Path(out_dir)
    kaggle = out / "kaggle"
    if not (kaggle / synth.CSV_DIR / synth.CSV_FILES["test"]).exists():
        synth.write_species_set(kaggle, config, show_progress=show_progress)
    species = synth.make_species(config)
    rng = np.random.default_rng([config.seed, 7])  # the data seed, its own stream
    held = {species[k]["name"] for k in rng.choice(len(species), round(new_classes * len(species)), replace=False)}
    counts: dict[str, dict] = {}
    rows_by_species = {}
    for split in SPLITS:
        with (kaggle / synth.CSV_DIR / synth.CSV_FILES[split]).open() as f:
            for row in csv.DictReader(f):
                rows_by_species.setdefault(row["species"], row)
                where = NEW_CLASSES if row["species"] in held else split
                target = out / where / folder_name(row["species"])
                target.mkdir(parents=True, exist_ok=True)
                (target / row["filename"]).write_bytes(
                    (kaggle / synth.IMAGE_DIR / split / "300p" / row["filename"]).read_bytes())
                seen = counts.setdefault(where, {"images": 0, "species": set()})
                seen["images"] += 1
                seen["species"].add(row["species"])
    (out / "texts").mkdir(parents=True, exist_ok=True)
    texts = {"names": lambda sp, row: sp["name"], "lineage": lambda sp, row: lineage(row),
             "descriptions": lambda sp, row: describe(sp["look"])}
    for name, text in texts.items():
        lines = [json.dumps({"class": folder_name(sp["name"]), "text": text(sp, rows_by_species[sp["name"]])})
                 for sp in species if sp["name"] in rows_by_species]
        (out / "texts" / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
    record = {"set": {"num_species": config.num_species, "image_size": config.image_size, "seed": config.seed},
              "new_classes_fraction": new_classes, "new_classes": sorted(held),
              "folders": {k: {"images": v["images"], "species": len(v["species"])} for k, v in counts.items()}}
    (out / "species.json").write_text(json.dumps(record, indent=1))
    return record


def register_cli(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("species-folders", help="the synthetic species as class folders with names, "
                                                      "lineage and descriptions (Planktonzilla's comparison)")
    p.add_argument("--out", required=True, help="folder to write")
    p.add_argument("--species", type=int, default=300)
    p.add_argument("--size", type=int, default=64, help="image side in pixels")
    p.add_argument("--new_classes", type=float, default=0.2, help="fraction of species held out of training")
    p.add_argument("--seed", type=int, default=0, help="data seed (keep apart from training seeds)")
    p.set_defaults(func=_run)
    return p


def _run(args) -> int:
    out = epath.Path(args.out)
    if (out / "species.json").exists():
        print(f"{out}: species folders already there; delete the folder to write them again")
        return 0
    record = write_species_folders(out, synth.SpeciesSetConfig(num_species=args.species, image_size=args.size,
                                                                seed=args.seed), new_classes=args.new_classes)
    print(f"wrote {out}: " + "; ".join(f"{k} {v['images']} images of {v['species']} species"
                                       for k, v in record["folders"].items()))
    return 0
