"""The ``etpmitm`` administration command (also ``python -m etpmitm``).

Each top-level subcommand lives in its own module with a ``register(subparsers)``
function that adds its parser and sets ``handler`` (``Namespace -> exit code``)
as a default; add new modules to :func:`subcommand_modules`.

Errors are one line on stderr, ``etpmitm: error: ...``, never a traceback (set
ETPMITM_DEBUG=1 to get one for unexpected failures). Exit codes: 0 success,
1 refused or failed (bad certificate, existing CA, ...), 2 usage (bad arguments,
missing directory, unreadable input file).
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import NoReturn, Protocol, TypeAlias

from etpmitm import __version__
from etpmitm.ca.errors import CAError
from etpmitm.keyfiles import KeyFileError

PROG = "etpmitm"
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

SubParsers: TypeAlias = "argparse._SubParsersAction[OneLineArgumentParser]"


class UsageError(Exception):
    """The command line is wrong (exit code 2)."""


class CommandFailed(Exception):
    """The command was understood but refused or failed (exit code 1)."""


REFUSALS = (CommandFailed, CAError, KeyFileError)
"""Exceptions whose one-line message is the whole story (exit code 1)."""


class OneLineArgumentParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors become :class:`UsageError` instead of usage text and exit."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


class Subcommand(Protocol):
    def register(self, subparsers: SubParsers) -> None: ...


Handler = Callable[[argparse.Namespace], int]


def subcommand_modules() -> Sequence[Subcommand]:
    """The modules that provide top-level subcommands (imported here, lazily)."""
    from etpmitm.ca import cli as ca_cli

    return (ca_cli,)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(prog=PROG, description="etpmitm: transparent TLS inspection gateway tools.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in subcommand_modules():
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``); return the exit code."""
    try:
        args = build_parser().parse_args(argv)
        handler: Handler = args.handler
        return handler(args)
    except SystemExit as e:  # --help and --version
        return e.code if isinstance(e.code, int) else EXIT_OK
    except UsageError as e:
        return _fail(str(e), EXIT_USAGE)
    except REFUSALS as e:
        return _fail(str(e), EXIT_FAILED)
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        return _fail(f"{where}{e.strerror or e}", EXIT_FAILED)
    except KeyboardInterrupt:
        return 130
    except Exception as e:
        if os.environ.get("ETPMITM_DEBUG"):
            traceback.print_exc()
        return _fail(f"unexpected {type(e).__name__}: {e}", EXIT_FAILED)


def _fail(message: str, code: int) -> int:
    one_line = " ".join(message.split())
    print(f"{PROG}: error: {one_line}", file=sys.stderr)
    return code
