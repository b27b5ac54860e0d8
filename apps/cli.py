"""The console script `mfd`.

It lives in `apps`, the outermost layer, so the core never imports an app: the core's
commands (run / compare / report / demo) and each app's subcommands register here.
Each command module exposes ``register(subparsers)``, adding its parser with
``set_defaults(func=...)``; ``func(args) -> int`` is the exit status.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# Modules that add subcommands, in the order `mfd --help` lists them.
COMMAND_MODULES = (
    "apps.core_commands",
    "apps.robots.cli",
    "apps.basestation.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mfd",
        description="MFD - Model Follow Data: models travel the network as packets to where the data is.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # that app is not built yet; the others still work
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
