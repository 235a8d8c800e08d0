"""The ``gsn-dask`` command line. Each subcommand lives in its own module here and
provides ``register(subparsers)``, which adds its parser and sets ``func``."""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

from .._version import __version__
from ..extras import MissingExtraError

#: subcommand modules, in the order shown by --help
SUBCOMMANDS = ("ingest", "grid", "train", "fit", "validate", "diagnose", "simulate", "demo", "export_parquet")


def quiet_distributed_logs() -> None:
    """distributed logs every worker/client (dis)connection at INFO: keep the terminal readable
    (unless -v). Its import sets its loggers' levels, so import it first, then override."""
    import distributed  # noqa: F401

    logging.getLogger("distributed").setLevel(logging.ERROR)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gsn-dask",
        description=(
            "Stellar labels (Teff, log g, [Fe/H], [alpha/Fe]) with full posteriors for "
            "low-resolution survey spectra, using a Generative Spectrum Network emulator "
            "and MCMC, run on Dask (or Spark via `python -m spark_compat`)."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run `gsn-dask <command> --help` for the options of each command.",
    )
    parser.add_argument("--version", action="version", version=f"gsn-dask {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    for name in SUBCOMMANDS:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return parser


def error_message(exc: BaseException) -> str:
    """One line for an input or file-system error: an OS error as ``<reason>: <path>``
    (``[Errno 20] Not a directory: 'x'`` -> ``Not a directory: x``), others as their message."""
    if isinstance(exc, OSError) and exc.errno is not None and exc.strerror:
        where = f": {exc.filename}" if exc.filename is not None else ""
        where += f" -> {exc.filename2}" if exc.filename2 is not None else ""
        return f"{exc.strerror}{where}"
    return " ".join(str(exc).split()) or type(exc).__name__


def run_cli(
    parser: argparse.ArgumentParser,
    argv: list[str] | None = None,
    *,
    name: str | None = None,
    interrupted: str | None = "interrupted",
) -> int:
    """Parse ``argv`` with ``parser`` (which has ``-v``/``--verbose`` and subcommands that set
    ``func``), set up logging (WARNING, -v INFO, -vv DEBUG) and run the subcommand; returns the
    exit status. No subcommand: help, 2. ``OSError`` (missing, existing, unreadable or
    unwritable files, a store in use) and ``ValueError`` (bad input or settings, a config or
    model that does not fit, ...) become one line ``<name> <command>: error: <message>`` on
    stderr and exit status 1 (with -vv the traceback instead). Ctrl-C: ``interrupted`` (if any) on stderr, 130. ``name`` defaults to the prog."""
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=[logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)],
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        rc = args.func(args)
    except KeyboardInterrupt:
        if interrupted:
            print(interrupted, file=sys.stderr)
        return 130
    except (OSError, ValueError, MissingExtraError) as exc:  # incl. StoreLockedError, ModelMismatchError, ConfigError
        if args.verbose >= 2:
            raise
        print(f"{name or parser.prog} {args.command}: error: {error_message(exc)}", file=sys.stderr)
        return 1
    return int(rc or 0)


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
