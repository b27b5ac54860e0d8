"""The console script `mfd`.

It lives in `apps`, the outermost layer, so the core never imports an app: the core's
commands (run / compare / report / demo / node / packets) and each app's subcommands
register here. Each command module exposes ``register(subparsers)``, adding its parser
with ``set_defaults(func=...)``; ``func(args) -> int`` is the exit status.

Whatever goes wrong is one line on stderr, ``mfd: error: ...``, and a non-zero exit
status (2 for a bad input, 1 for a failure, 130 for an interruption); ``--debug`` shows
the traceback instead.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

# Modules that add subcommands, in the order `mfd --help` lists them.
COMMAND_MODULES = (
    "apps.core_commands",
    "apps.robots.cli",
    "apps.basestation.cli",
)


def _version() -> str:
    from mfd_core import __version__

    return f"mfd {__version__}"


class Parser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line (``mfd: error: ...``), not the usage text."""

    def error(self, message: str):
        command = self.prog.removeprefix("mfd").strip()
        hint = f" (mfd {command} --help)" if command else " (mfd --help)"
        self.exit(2, f"mfd: error: {message}{hint}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="mfd",
        description="MFD - Model Follow Data: models travel the network as packets to where the data is.",
        epilog="Run `mfd COMMAND --help` for a command's options.",
    )
    parser.add_argument("--version", action="version", version=_version())
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
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
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv or os.environ.get("MFD_DEBUG") == "1"
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            parser.print_help()
            return 2
        return int(args.func(args) or 0)
    except SystemExit:
        raise
    except KeyboardInterrupt:
        print("mfd: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # one line for a person; --debug for the traceback
        if debug:
            raise
        from apps.common import UsageError

        usage = isinstance(err, (UsageError, ValueError, OSError)) or type(err).__name__.endswith("Error") and \
            type(err).__module__.startswith(("mfd_core", "apps", "envs"))
        text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if not isinstance(err, UsageError) and not usage:
            text = f"{type(err).__name__}: {text} (mfd --debug ... shows where)"
        print(f"mfd: error: {text}", file=sys.stderr)
        return 2 if isinstance(err, UsageError) else 1


if __name__ == "__main__":
    sys.exit(main())
