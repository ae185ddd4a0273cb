"""The `fungizsl` command line: one sub-command per capability.

Each sub-command lives in the module that implements it, which exposes `register_cli(subparsers)`;
modules are imported (by name, from COMMANDS) only when their command is asked for.
"""

import argparse
import importlib
import sys

from fungizsl import main as train_main
from fungizsl.errors import ConfigError

# sub-command -> module exposing register_cli(subparsers), which sets `func` on its parser.
COMMANDS = {
    "render": "fungizsl.data.contact_sheets",
    "captions": "fungizsl.data.llm_captions",
    "build": "fungizsl.data.builders",
    "crosstable": "fungizsl.evaluate.crosstable",
    "comparison": "fungizsl.planktonzilla.compare",
    "species-folders": "fungizsl.planktonzilla.species",
    "fungiclef": "fungizsl.fungiclef.cli",
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fungizsl", description=__doc__.splitlines()[0],
        epilog="training: fungizsl train --config=configs/fungalzsl.py:arch=b32 --workdir=DIR "
               "(same flags as python -m fungizsl.main)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        if only is not None and name != only:
            subparsers.add_parser(name, help=f"(see `fungizsl {name} --help`)")
            continue
        importlib.import_module(module_name).register_cli(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "train":  # absl owns these flags: `fungizsl train --config=... --workdir=...`
        train_main.run(["fungizsl train", *argv[1:]])
        return 0
    command = argv[0] if argv and argv[0] in COMMANDS else None
    parser = build_parser(only=command) if command else build_parser(only="")
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except ConfigError as error:  # a user's mistake: one line naming the file, field or key
        print(f"fungizsl {args.command}: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
