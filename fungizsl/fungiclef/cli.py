"""`fungizsl fungiclef ...`: the steps of the FungiCLEF 2025 system that run before training
(Lu et al., FungiCLEF 2025): `synth` renders the synthetic species set in the Kaggle layout,
`features` caches image-tower token features of a built `fungiclef2025` dataset."""

from __future__ import annotations

from fungizsl.fungiclef import features, synthetic_species


def register_cli(subparsers) -> None:
    parser = subparsers.add_parser("fungiclef", help="FungiCLEF 2025: synthetic species set, feature cache")
    steps = parser.add_subparsers(dest="fungiclef_step", metavar="STEP")
    synthetic_species.register_cli(steps)
    features.register_cli(steps)
