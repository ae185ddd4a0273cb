"""The evaluator registry: evaluator names -> classes, and running the evaluators of a config.

The evaluators themselves live one per module of this package and join with ``@register("name")``.
The built-in ones are listed in :data:`BUILTIN` by module, and :func:`get_evaluator` imports that
module the first time its name is asked for, so this module imports none of them (no circle: the
evaluator modules import ``register`` from here). An evaluator of your own registers when its
module is imported.

Each evaluator is a class built from its config (an ``ml_collections.ConfigDict`` or a plain dict)
whose ``run(**inputs)`` yields ``(metric_name, value)`` pairs; see the package docstring
(:mod:`fungizsl.evaluate`) for the inputs and the config keys the trainers read.
"""

import importlib
from typing import Any, Callable, Iterator, Mapping

#: Built-in evaluator name -> the module that registers it.
BUILTIN = {
    "zeroshot": "fungizsl.evaluate.zeroshot",
    "retrieval": "fungizsl.evaluate.retrieval",
    "fungiclef_observations": "fungizsl.evaluate.observations",
    "descriptions": "fungizsl.evaluate.descriptions",
    "openset": "fungizsl.evaluate.openset",
    "decisions": "fungizsl.evaluate.decisions",
    "taxonomy": "fungizsl.evaluate.taxonomy",
    "chils": "fungizsl.evaluate.taxonomy",
}

EVALUATORS: dict[str, type] = {}


def register(name: str) -> Callable[[type], type]:
    """Class decorator adding an evaluator to the registry under `name`."""
    def add(cls: type) -> type:
        if name in EVALUATORS and EVALUATORS[name] is not cls:
            raise ValueError(f"evaluator {name!r} is already registered as {EVALUATORS[name]}")
        EVALUATORS[name] = cls
        return cls
    return add


def get_evaluator(name: str) -> type:
    if name not in EVALUATORS and name in BUILTIN:
        importlib.import_module(BUILTIN[name])  # the module registers its evaluators on import
    if name not in EVALUATORS:
        raise KeyError(f"unknown evaluator {name!r}; known: {sorted(set(EVALUATORS) | set(BUILTIN))}")
    return EVALUATORS[name]


def make_evaluator(name: str, config: Mapping[str, Any] | None = None):
    """Builds the evaluator `config["type"]` (default `name`) from its config."""
    config = {} if config is None else config
    return get_evaluator(config.get("type", name))(config)


def run_evaluators(evals_config: Mapping[str, Mapping[str, Any]], **inputs) -> Iterator[tuple[str, Any]]:
    """Runs every configured evaluator on the same inputs; yields ("<name>/<metric>", value)."""
    for name, config in evals_config.items():
        for metric, value in make_evaluator(name, config).run(**inputs):
            yield f"{name}/{metric}", value
