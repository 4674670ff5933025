"""The ``contentiqa`` command. Each sub-command lives in its own module of this package and
exposes ``add_parser(subparsers)``; the parser it adds sets ``func`` to a callable taking the
parsed args and returning an exit code (0 all good, 1 some inputs failed, 2 usage error)."""
from __future__ import annotations

import argparse
import importlib
import io
import sys
import warnings

from ..utils.terminal import printable

# Module names under contentiqa.cli, in the order `--help` lists them.
COMMAND_MODULES = [
    "score",
    "explain",
    "train",
    "evaluate",
    "label_content",
    "analyze",
    "export",
    "experiment",
    "info",
    "cache",
    "serve",
]


class UsageError(Exception):
    """Raised by commands for bad arguments: printed without a traceback, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="contentiqa",
        description="No-reference image quality assessment that understands what the image shows.",
    )
    parser.add_argument("--version", action="version", version=f"contentiqa {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"contentiqa.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"contentiqa.cli.{name}":
                continue  # command not built yet
            raise
        module.add_parser(sub)
    return parser


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    """What a command's user reads of a library warning (e.g. images skipped): the message, not
    the source line that raised it, and the file being read when a decoder gave it mid-read."""
    imageio = sys.modules.get("contentiqa.data.imageio")  # loaded once images are read: never imported here
    reading = imageio.loading_path() if imageio is not None else None
    return f"warning: {printable(reading) + ': ' if reading else ''}{message}\n"


def _parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """The command line's arguments, a command's paths wherever they stand: argparse stops
    taking positionals at a command's first option (`score a.jpg -m x b.jpg` was "unrecognized
    arguments: b.jpg", with the top-level usage), so what is left is parsed again by the
    command's own parser, intermixed (its errors in its own words)."""
    args, rest = parser.parse_known_args(argv)
    argv = sys.argv[1:] if argv is None else list(argv)
    name = getattr(args, "command", None)
    if not rest or name is None:  # nothing left, or no command: argparse's own error
        return parser.parse_args(argv)
    at = argv.index(name)
    before = [a for a in rest if a in argv[:at]]
    if before:  # an unknown option before the command: named alone, not with the paths after it
        parser.error(f"unrecognized arguments: {' '.join(before)}")
    command = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[name]
    own = argv[at + 1:]
    if not any(a.nargs in ("*", "+") for a in command._actions if not a.option_strings):
        # one positional: what is left is a stray argument, said as argparse says it (the
        # intermixed parse drops a '--', reading what follows it as options)
        return command.parse_args(own, namespace=argparse.Namespace(command=name))
    return command.parse_intermixed_args(own, namespace=argparse.Namespace(command=name))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = _parse(parser, argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from ..utils.extras import ExtraMissing, missing_module_message

    if isinstance(sys.stdout, io.TextIOWrapper):  # a file name that is not valid UTF-8 prints escaped, not as a crash
        sys.stdout.reconfigure(errors="backslashreplace")
    shown_as, warnings.formatwarning = warnings.formatwarning, _one_line_warning  # for this command only
    from ._output import forget_made_folders, interrupt_exit_code, remove_made_folders

    interrupt_exit_code()  # forget a signal an earlier command of this process was stopped by
    forget_made_folders()
    try:
        with warnings.catch_warnings():
            # Pillow's warnings about one file's data (damaged EXIF) for every file that has it,
            # not only the first: each names its file
            warnings.filterwarnings("always", category=UserWarning, module=r"PIL\.")
            return int(args.func(args) or 0)
    except (UsageError, ExtraMissing) as exc:
        from .common import in_cli_words  # a photo's error met while training: the advice in CLI terms

        print(f"contentiqa {args.command}: error: {in_cli_words(str(exc))}", file=sys.stderr)
        remove_made_folders()
        return 2
    except ModuleNotFoundError as exc:  # an optional dependency (PyTorch ...) this install lacks: one line
        message = missing_module_message(exc)
        if message is None:
            raise
        print(f"contentiqa {args.command}: error: {message}", file=sys.stderr)
        remove_made_folders()
        return 2
    except KeyboardInterrupt as exc:  # a command may say what was kept and how to go on
        print(str(exc) or "interrupted", file=sys.stderr)
        return interrupt_exit_code()
    finally:
        warnings.formatwarning = shown_as


if __name__ == "__main__":
    # run as `python -m contentiqa.cli.main`, this file is __main__ and the commands import it again
    # as contentiqa.cli.main: their UsageError is that module's, so that module's main handles them
    from contentiqa.cli.main import main as _main

    sys.exit(_main())
