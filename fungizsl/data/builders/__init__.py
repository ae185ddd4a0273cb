"""TFDS dataset builders writing ``array_record`` shards for the Grain input pipeline.

Three builders, each in its own importable module (Grain workers re-import them):

* ``fungal_growth_stages`` (:mod:`.fungal_growth_stages`): rendered spore / hyphae / mycelium
  images, the synthetic data of FungalZSL;
* ``fungiclef2025`` (:mod:`.fungiclef2025`): FungiCLEF 2025 / FungiTastic-FewShot images with
  typed metadata and captions, or metadata only;
* ``image_folder`` (:mod:`.image_folder`): class-folder sets such as DeFungi, split by source
  group so that no slide straddles two splits.

From Python::

    from fungizsl.data import builders
    b = builders.build("fungiclef2025", "metadata_only", data_dir="~/tfds",
                       manual_dir="/data/fungiclef2025")
    train = b.as_data_source("train")          # random access, no TensorFlow needed
    record = train[0]                          # dict of numpy values; text fields are bytes

or with the classes and TFDS directly::

    from fungizsl.data.builders.fungiclef2025 import FungiClef2025
    b = FungiClef2025(config="metadata_only", data_dir=..., manual_dir=...)
    b.download_and_prepare()   # or download_config=tfds.download.DownloadConfig(manual_dir=...)
    tfds.data_source("fungiclef2025/metadata_only", split="val", data_dir=...)  # once imported

From the command line: ``fungizsl build {fungal_growth_stages,fungiclef2025,image_folder} ...``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
from collections.abc import Sequence

import tensorflow_datasets as tfds

from fungizsl.data.builders._common import derive_config
from fungizsl.data.synthetic import ALL_STAGES, PRESETS

#: builder name -> "module:class"; builder modules are imported only when asked for.
BUILDERS = {
    "fungal_growth_stages": "fungizsl.data.builders.fungal_growth_stages:FungalGrowthStages",
    "fungiclef2025": "fungizsl.data.builders.fungiclef2025:FungiClef2025",
    "image_folder": "fungizsl.data.builders.image_folder:ImageFolder",
}

__all__ = ["BUILDERS", "builder_class", "get_builder", "build", "data_source", "register_cli"]


def builder_class(name: str):
    """The builder class registered as ``name`` (importing its module registers it with TFDS)."""
    try:
        module_name, class_name = BUILDERS[name].split(":")
    except KeyError:
        raise ValueError(f"unknown builder {name!r}; known: {', '.join(BUILDERS)}") from None
    return getattr(importlib.import_module(module_name), class_name)


def get_builder(name: str, config=None, *, data_dir: str | os.PathLike | None = None,
                manual_dir: str | os.PathLike | None = None, **kwargs):
    """A builder instance; ``config`` is a config name, a BuilderConfig, or None for the default.

    A config name that is not one of the builder's own (a custom config built earlier, e.g.
    ``image_folder/defungi_1a2b3c4d``) is opened read-only from ``data_dir`` when it is there.
    """
    cls = builder_class(name)
    if data_dir is not None:
        data_dir = os.path.expanduser(os.fspath(data_dir))
    if isinstance(config, str) and config not in cls.builder_configs:
        prepared = _prepared_dir(cls.name, config, data_dir)
        if prepared is None:
            raise ValueError(f"{name} has no config {config!r} (configs: {', '.join(cls.builder_configs)}) "
                             f"and no prepared dataset of that name under {data_dir or 'the TFDS data dir'}")
        return tfds.builder_from_directory(prepared)
    return cls(config=config, data_dir=data_dir, manual_dir=manual_dir, **kwargs)


def _prepared_dir(name: str, config: str, data_dir: str | None) -> str | None:
    root = os.path.join(data_dir or tfds.core.constants.DATA_DIR, name, config)
    if not os.path.isdir(root):
        return None
    versions = [v for v in os.listdir(root) if os.path.isfile(os.path.join(root, v, "dataset_info.json"))]
    if not versions:
        return None
    latest = max(versions, key=lambda v: tuple(int(p) if p.isdigit() else -1 for p in v.split(".")))
    return os.path.join(root, latest)


def build(name: str, config=None, *, data_dir: str | os.PathLike | None = None,
          manual_dir: str | os.PathLike | None = None, overwrite: bool = False, **kwargs):
    """Prepare (build) a dataset and return its builder; an existing build is reused unless overwrite."""
    builder = get_builder(name, config, data_dir=data_dir, manual_dir=manual_dir, **kwargs)
    mode = (tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS if overwrite
            else tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(download_mode=mode))
    return builder


def data_source(name: str, split: str, config=None, *, data_dir: str | os.PathLike | None = None):
    """Random-access source over a prepared split (what the Grain pipeline reads)."""
    return get_builder(name, config, data_dir=data_dir).as_data_source(split)


# ----------------------------------------------------------------------------------------------
# Command line: fungizsl build ...
# ----------------------------------------------------------------------------------------------


def _common_options(parser: argparse.ArgumentParser, default_config: str, configs: Sequence[str],
                    manual: str | None) -> None:
    parser.add_argument("--data-dir", default=None,
                        help="where prepared datasets live (default: $TFDS_DATA_DIR or ~/tensorflow_datasets)")
    parser.add_argument("--manual-dir", default=None, required=manual is not None,
                        help=manual or "not used by this builder")
    parser.add_argument("--config", default=default_config,
                        help=f"one of {', '.join(configs)} (default {default_config})")
    parser.add_argument("--name", default=None,
                        help="name of the config when options below change it (default: <config>_<hash of options>)")
    parser.add_argument("--overwrite", action="store_true", help="rebuild even if the dataset already exists")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _csv(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


def _range(value: str) -> tuple[float, float]:
    parts = _csv(value)
    try:
        low, high = (float(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH (two numbers), got {value!r}") from None
    return low, high


def _fractions(value: str) -> tuple[tuple[str, float], ...]:
    """'train=0.7,val=0.15,test=0.15' or '0.7,0.15,0.15' (train, val, test)."""
    parts = _csv(value)
    if all("=" in p for p in parts):
        return tuple((k.strip(), float(v)) for k, v in (p.split("=", 1) for p in parts))
    if len(parts) == 3 and not any("=" in p for p in parts):
        return tuple(zip(("train", "val", "test"), map(float, parts)))
    raise argparse.ArgumentTypeError(f"expected 'train=0.7,val=0.15,test=0.15' or three numbers, got {value!r}")


def _key_value(value: str) -> tuple[str, object]:
    if "=" not in value:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {value!r}")
    key, raw = value.split("=", 1)
    try:
        parsed = json.loads(raw)
    except ValueError:
        parsed = raw
    return key.strip(), parsed


def register_cli(subparsers) -> argparse.ArgumentParser:
    """Add ``build`` with one nested sub-command per builder."""
    parser = subparsers.add_parser("build", help="build a dataset into array_record shards (TFDS)",
                                   description="Build a TFDS dataset (array_record shards) for the Grain pipeline.")
    nested = parser.add_subparsers(dest="builder", metavar="BUILDER", required=True)

    gs = nested.add_parser("fungal_growth_stages", help="rendered spore/hyphae/mycelium images (FungalZSL)")
    _common_options(gs, "realistic_224", ("realistic_224", "paper_224", "realistic_336", "paper_336",
                                          "realistic_224_hard", "realistic_224_five_stages", "realistic_224_randomised",
                                          "tiny"), None)
    gs.add_argument("--size", type=int, dest="image_size", help="image side in pixels")
    gs.add_argument("--preset", choices=PRESETS)
    gs.add_argument("--overlap", type=float, dest="hyphae_mycelium_overlap", help="hyphae/mycelium overlap in [0, 1]")
    gs.add_argument("--stages", type=_csv, help=f"comma list from {', '.join(ALL_STAGES)}")
    gs.add_argument("--magnification", type=_range, help="per-image magnification range LOW,HIGH (realistic)")
    gs.add_argument("--field-fraction", type=float, help="share of network images drawn as fields of small colonies")
    gs.add_argument("--train-per-class", type=int)
    gs.add_argument("--val-per-class", type=int)
    gs.add_argument("--test-per-class", type=int)
    gs.add_argument("--seed", type=int)
    gs.add_argument("--encoding", choices=("png", "jpeg"))
    gs.add_argument("--jpeg-quality", type=int)
    gs.add_argument("--caption-source", help="store one caption per image from this caption source "
                                             "(fungalzsl_split, fungalzsl_generated, templates, jsonl)")
    gs.add_argument("--caption-arg", type=_key_value, action="append", default=[], metavar="KEY=VALUE",
                    help="argument of the caption source, e.g. root=/data/fungalzsl (repeatable)")
    gs.add_argument("--workers", type=int, default=0, help="render in this many processes (0: in this one)")
    gs.set_defaults(func=run_build_cli, overrides=("image_size", "preset", "hyphae_mycelium_overlap", "stages",
                                                   "train_per_class", "val_per_class", "test_per_class", "seed",
                                                   "encoding", "jpeg_quality", "caption_source", "magnification",
                                                   "field_fraction"))

    fc = nested.add_parser("fungiclef2025", help="FungiCLEF 2025 (FungiTastic-FewShot) images and metadata")
    _common_options(fc, "300p", ("300p", "500p", "720p", "fullsize", "metadata_only"),
                    "the Kaggle download (metadata/, images/, captions/) or, for --metadata-only, "
                    "a folder with the three CSVs")
    fc.add_argument("--metadata-only", action="store_true", help="no images (same as --config metadata_only)")
    fc.add_argument("--max-rows", type=int, dest="max_rows_per_split", help="first N rows of each split only")
    fc.set_defaults(func=run_build_cli, overrides=("max_rows_per_split",))

    imf = nested.add_parser("image_folder", help="class-folder image sets (e.g. DeFungi), grouped splits")
    _common_options(imf, "defungi", ("defungi", "by_file"), "root folder of the class folders (root/<class>/<file>)")
    group = imf.add_mutually_exclusive_group()
    group.add_argument("--group-regex", help=r"regex on the file name; group 1 (or the match) is the split group")
    group.add_argument("--no-groups", action="store_true", help="every file is its own group")
    imf.add_argument("--fractions", type=_fractions, help="e.g. train=0.7,val=0.15,test=0.15")
    imf.add_argument("--split-method", choices=("shuffle", "hash"))
    imf.add_argument("--seed", type=int)
    imf.add_argument("--classes", type=_csv, dest="class_names", help="comma list of class folders (default: all)")
    imf.set_defaults(func=run_build_cli, overrides=("group_regex", "fractions", "split_method", "seed", "class_names"))
    return parser


def _cli_config(args: argparse.Namespace):
    """The config to build: a named one, or a derived one when options change it."""
    cls = builder_class(args.builder)
    config_name = args.config
    if getattr(args, "metadata_only", False):
        if config_name not in ("300p", "metadata_only"):
            raise ValueError(f"--metadata-only contradicts --config {config_name}")
        config_name = "metadata_only"
    if config_name not in cls.builder_configs:
        raise ValueError(f"{args.builder} has no config {config_name!r}; configs: {', '.join(cls.builder_configs)}")
    base = cls.builder_configs[config_name]
    overrides = {key: getattr(args, key) for key in args.overrides if getattr(args, key) is not None}
    if args.builder == "fungal_growth_stages" and args.caption_arg:
        overrides["caption_kwargs"] = dict(args.caption_arg)
    if args.builder == "image_folder" and args.no_groups:
        overrides["group_regex"] = None
    return derive_config(base, overrides, args.name)


def run_build_cli(args: argparse.Namespace) -> int:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        logging.getLogger("absl").setLevel(logging.WARNING)  # TFDS's own INFO lines repeat ours
    try:
        config = _cli_config(args)
    except ValueError as err:
        print(f"fungizsl build {args.builder}: {err}", file=sys.stderr)
        return 2
    if args.no_progress:
        tfds.disable_progress_bar()
    kwargs = {"workers": args.workers} if args.builder == "fungal_growth_stages" else {}
    try:
        builder = build(args.builder, config, data_dir=args.data_dir, manual_dir=args.manual_dir,
                        overwrite=args.overwrite, **kwargs)
    except (FileNotFoundError, ValueError) as err:
        print(f"fungizsl build {args.builder}: {err}", file=sys.stderr)
        return 1
    print(describe(builder))
    return 0


def describe(builder) -> str:
    """A few lines: where the dataset is, its splits and sizes, what was skipped."""
    info = builder.info
    lines = [f"{info.full_name} at {builder.data_dir}"]
    skipped = (info.metadata or {}).get("skipped", {}) if info.metadata is not None else {}
    for split, split_info in info.splits.items():
        line = f"  {split}: {split_info.num_examples} examples"
        dropped = skipped.get(split, {}).get("skipped", [])
        if dropped:
            line += f", {len(dropped)} skipped (see metadata.json)"
        lines.append(line)
    return "\n".join(lines)
