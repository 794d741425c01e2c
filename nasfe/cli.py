"""``nasfe <command>``: thin argument parsing; each command lives in the module that does the work.

Every command module exposes ``add_arguments(parser)`` and ``main(args) -> int`` (or
``add_<command>_arguments`` and ``<command>_main``); they are
imported only when their command runs, so ``nasfe --help`` stays fast and a command never pays
for another's imports (Ray, W&B, onnxruntime).
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import sys
from typing import Optional, Sequence

from nasfe.errors import CommandError, NasfeError  # noqa: F401  (CommandError re-exported)

#: command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "testsets": ("nasfe.data.testsets", "build Test-B/N/L/BN/BNL (Table 4) from a face folder"),
    "search": ("nasfe.distributed.search_job", "architecture search on Ray Train (then retrain and evaluate)"),
    "retrain": ("nasfe.distributed.retrain_job", "retrain a derived genotype on Ray Train"),
    "sweep": ("nasfe.distributed.sweep_job", "hyperparameter sweep with Ray Tune + Optuna + ASHA"),
    "rank": ("nasfe.distributed.rank_job", "retrain random, searched and hand-made genotypes; does the search rank?"),
    "compare": ("nasfe.evaluate.compare", "compare derived architectures (table, diff, cell graphs)"),
    "evaluate": ("nasfe.evaluate.evaluate_cmd", "PSNR/SSIM/recognition of a trained model on test sets"),
    "restore": ("nasfe.evaluate.restore", "restore your own photos with a trained model"),
    "export": ("nasfe.evaluate.export", "export a derived network to ONNX and TorchScript"),
    "ablation": ("nasfe.evaluate.ablation", "train and evaluate Table 6's ablation rows"),
    "wandb-sync": ("nasfe.distributed.wandb_sync_job", "upload a run's offline W&B folders from its storage"),
}


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one sub-parser per available command."""
    parser = argparse.ArgumentParser(
        prog="nasfe",
        description="NASFE: network architecture search for face enhancement (blur, noise, low light).",
        epilog="`nasfe COMMAND --help` shows a command's options.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
    return parser


#: errno values that are the machine's state, not a bug: a full disk, a read-only or forbidden folder
_ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


def _user_error(exc: BaseException) -> bool:
    """True for errors that are the user's input or machine, not a bug: one clear line, no traceback."""
    if isinstance(exc, (NasfeError, FileNotFoundError)):
        return True
    return isinstance(exc, OSError) and exc.errno in _ENVIRONMENT_ERRNOS


def one_line(exc: BaseException) -> str:
    """The error's message on one line (YAML and torch messages run over several)."""
    return " ".join(part.strip() for part in str(exc).splitlines() if part.strip()) or type(exc).__name__


class _StderrHandler(logging.StreamHandler):
    """Writes each record to ``sys.stderr`` as it is at that moment, not the stream of the first
    ``main`` call (which a caller that swapped ``sys.stderr``, a test's capture, may have closed)."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``nasfe`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    # find the command name first, then let its module add the rest of its arguments (so that
    # `nasfe COMMAND --help` shows the command's own options)
    command = next((a for a in argv if not a.startswith("-")), None)
    if command is None or command not in COMMANDS:
        if command is not None or not set(argv) & {"-h", "--help"}:
            parser.parse_args(argv)  # prints usage and exits 2 for an unknown command
        parser.print_help()
        return 0
    known = argparse.Namespace(
        command=command,
        verbose=argv.index(command) > 0 and bool(set(argv[: argv.index(command)]) & {"-v", "--verbose"}),
    )
    module = importlib.import_module(COMMANDS[known.command][0])
    add_arguments = getattr(module, "add_arguments", None) or getattr(module, f"add_{known.command}_arguments")
    run = getattr(module, "main", None) or getattr(module, f"{known.command}_main")
    sub = argparse.ArgumentParser(prog=f"nasfe {known.command}", description=COMMANDS[known.command][1])
    sub.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    add_arguments(sub)
    rest = argv[argv.index(known.command) + 1 :]
    args = sub.parse_args(rest)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose or known.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        handlers=[_StderrHandler()],
    )
    try:
        return int(run(args) or 0)
    except Exception as exc:
        if not _user_error(exc):
            raise
        print(f"nasfe {known.command}: error: {one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"nasfe {known.command}: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


def run_job(command: str) -> None:
    """Entry point of ``jobs/<command>.py``: ``ray submit cluster.yaml jobs/X.py -- ARGS`` passes
    a leading ``--`` that the command must not see."""
    argv = sys.argv[1:]
    if argv[:1] == ["--"]:
        argv = argv[1:]
    sys.exit(main([command, *argv]))


if __name__ == "__main__":
    sys.exit(main())
