"""The `totalgen-eval` command line: thin Typer commands over the library modules.

The app and the options shared by all commands; the commands live in cohorts.py (inspect, phantoms,
doctor, segment, metrics), results.py (stats, compare, plot, demo) and synthesis.py (generate, train,
benchmark).

Every command that meets bad input prints one line ``error: <file>: <problem>`` and exits with status 2
(bad options, OS errors such as a full disk, corrupt checkpoints and JSON included); an unexpected error is one
line too, with status 1 (``TOTALGEN_EVAL_DEBUG=1`` shows its traceback). Warnings are one line each. Paths
and case ids are printed as text (never as rich markup) with control characters escaped.
Long commands show a progress bar and can be interrupted and re-run: finished cases are kept.
"""
from __future__ import annotations

import functools
import json
import os
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Callable, Iterable, Iterator, Optional

import typer
from rich.console import Console
from rich.text import Text
from typer.core import TyperCommand, TyperGroup

try:
    from typer import _click as click  # the click that typer >= 0.2x vendors
except ImportError:  # pragma: no cover - older typer runs on click itself
    import click

from .. import __version__
from ..errors import InputError, describe_os_error, printable
from ..volumes import DEFAULT_MAX_VOXELS, set_max_voxels  # noqa: F401  (re-exported for the commands)

if TYPE_CHECKING:
    from ..cohort import Cohort

console = Console(stderr=True, markup=False, emoji=False, highlight=False)
out = Console(markup=False, emoji=False, highlight=False)


def say(text: object, style: str | None = None) -> None:
    """Print one line of plain text (paths and ids are never read as markup; control characters escaped)."""
    out.print(Text(printable(text), style=style or ""), soft_wrap=True)


def error_line(message: object, label: str = "error") -> None:
    """``error: <message>`` on stderr, on one line whatever the terminal width."""
    style = "red" if label == "error" else "yellow"
    console.print(Text.assemble((f"{label}: ", style), printable(message)), soft_wrap=True)


_METAVARS = {"<path>": "PATH", "<str>": "TEXT", "<int>": "INT", "<float>": "NUMBER"}


def _readable_metavars(params: list, ctx: Any = None) -> list:
    """Readable metavars: flags show none (``--force``, not ``--force <bool>``), others PATH, TEXT, INT, NUMBER."""
    for param in params:
        if param.param_type_name != "option" or param.metavar is not None:
            continue
        if getattr(param, "is_flag", False):
            param.metavar = ""
        elif ctx is not None and hasattr(param, "display_type"):
            shown = param.display_type(ctx)
            param.metavar = _METAVARS.get(shown) if shown in _METAVARS else None
    return params


class _Command(TyperCommand):
    """A command whose help reads well: flags show no ``<bool>``, the usage line shows ``COHORT``, not ``{cohort}``."""

    def get_params(self, ctx: click.Context) -> list[click.Parameter]:
        return _readable_metavars(super().get_params(ctx), ctx)

    def collect_usage_pieces(self, ctx: click.Context) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if param.param_type_name == "argument" and not param.hidden:
                name = (param.metavar or param.name or "").upper()
                pieces.append(name if param.required else f"[{name}]")
        return pieces


INVOCATION: list[str] = ["totalgen-eval"]  # the command line being run (recorded in output markers)


class _Group(TyperGroup):
    """The app: usage errors (a bad option value, a missing argument) are one line, status 2."""

    def get_params(self, ctx: click.Context) -> list[click.Parameter]:
        return _readable_metavars(super().get_params(ctx), ctx)

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        global INVOCATION
        INVOCATION = ["totalgen-eval", *(sys.argv[1:] if args is None else list(args))]
        try:
            rv = super().main(args=args, prog_name=prog_name, complete_var=complete_var, standalone_mode=False,
                              **extra)
        except click.exceptions.UsageError as exc:
            if type(exc).__name__ == "NoArgsIsHelpError":  # the bare command: its help
                out.print(exc.format_message(), markup=False, soft_wrap=True)
            else:
                where = exc.ctx.command_path if exc.ctx is not None else (prog_name or "totalgen-eval")
                error_line(f"{exc.format_message()} (options: {where} -h)")
            rv = 2
        except click.exceptions.ClickException as exc:
            error_line(exc.format_message())
            rv = exc.exit_code
        except typer.Abort:
            error_line("aborted")
            rv = 1
        if not standalone_mode:
            return rv
        sys.exit(rv if isinstance(rv, int) else 0)


app = typer.Typer(
    name="totalgen-eval",
    help="Generate synthetic whole-body FDG PET/CT and judge it against real scans, organ by organ.\n\n"
         "Start with `totalgen-eval demo`; then `generate`, `compare`, `plot`.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,
    rich_markup_mode="rich",
    cls=_Group,
    context_settings={"help_option_names": ["-h", "--help"]},
)

# Options shared by several commands ----------------------------------------------------------------
Seed = Annotated[int, typer.Option("--seed", metavar="INT", help="Random seed: the same seed gives the same result.")]
Workers = Annotated[int, typer.Option("--workers", "-j", min=1, max=256, metavar="N", help="Parallel worker processes.")]
Device = Annotated[str, typer.Option("--device", metavar="DEVICE", help="Torch device: cpu, cuda, cuda:1 ...")]
MAX_CASES = 100_000  # --n of phantoms and generate
MaxVoxels = Annotated[int, typer.Option("--max-voxels", min=1, metavar="N", help="Refuse volumes with more voxels than this "
                                        "(checked from the file header before reading; AutoPET's are 96 M).")]
Progress = Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")]
Segmenter = Annotated[Optional[str], typer.Option(
    "--segmenter", metavar="SPEC", help="labels | totalsegmentator | model:PATH | model:bundled (default: labels where the "
                        "cohort has them, else TotalSegmentator where its weights exist).")]
SkipBad = Annotated[bool, typer.Option("--skip-bad", help="Leave bad cases out (listed with the reason in "
                                                          "excluded.csv) instead of stopping at the first.")]
Lesions = Annotated[str, typer.Option("--lesions", metavar="MODE", help="exclude (default): voxels of a case's "
                                      "lesion mask leave the organ SUV/HU statistics; include: keep them.")]
LesionMargin = Annotated[float, typer.Option("--lesion-margin", metavar="MM", help="With --lesions exclude, also "
                                             "leave out organ voxels within MM of a lesion (PET blur spill).")]
Scheduler = Annotated[Optional[str], typer.Option(
    "--scheduler", help="Where cases run: the in-process pool of --workers (default), local:N (a Dask "
                        "LocalCluster of N processes) or tcp://host:port (a running Dask cluster).")]


def _friendly(func: Callable) -> Callable:
    """Run a command with one-line errors (``error_for``) and one-line warnings."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            try:
                return func(*args, **kwargs)
            except (typer.Exit, typer.Abort, click.exceptions.ClickException):
                raise
            except KeyboardInterrupt:
                error_line("finished cases are kept; run the same command again to resume", "interrupted")
                raise typer.Exit(130) from None
            except Exception as exc:
                if os.environ.get("TOTALGEN_EVAL_DEBUG"):
                    raise
                status, message = error_for(exc)
                error_line(message)
                raise typer.Exit(status) from None

    return wrapper


def error_for(exc: BaseException) -> tuple[int, str]:
    """(exit status, one-line message) for an exception reaching the command line.

    Status 2: bad input (InputError), the file system (permission, no space, file too large ...), corrupt
    checkpoints, safetensors or JSON files, memory exhausted. Status 1: anything else (a bug: the message says
    how to see the traceback).
    """
    name = type(exc).__name__
    first = (str(exc).strip().splitlines() or [""])[0]
    if isinstance(exc, InputError) or name == "CheckpointError":
        return 2, str(exc).replace("\n", " ")
    if isinstance(exc, OSError):
        return 2, describe_os_error(exc)
    if isinstance(exc, json.JSONDecodeError):
        return 2, f"invalid JSON ({first})"
    if name == "SafetensorError":
        return 2, f"corrupt or truncated safetensors file ({first})"
    if isinstance(exc, MemoryError):
        return 2, "out of memory: use fewer --workers, a smaller --batch-size or lower --max-voxels"
    return 1, f"unexpected {name}: {first} (set TOTALGEN_EVAL_DEBUG=1 to see the traceback)"


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Python warnings as one line ``warning: <message>`` (no source line)."""
    error_line(str(message).replace("\n", " "), "warning")


# outputs: never an input, only into folders this tool made, one run at a time --------------------------
def _has(*names: str) -> Callable[[Path], bool]:
    return lambda folder: any((folder / name).exists() for name in names)


def _results_folder(folder: Path) -> bool:
    try:
        return str(json.loads((folder / "config.json").read_text()).get("tool", "")).startswith("totalgen-eval")
    except (OSError, ValueError, AttributeError):
        return False


#: per command: (markers of other commands it may write over, how a folder of an older version is recognised)
OUTPUT_KINDS: dict[str, tuple[tuple[str, ...], Callable[[Path], bool]]] = {
    "generate": ((), _has("generate.json")),
    "phantoms": ((), _has("phantom.json")),
    "compare": (("demo", "stats"), _results_folder),
    "stats": (("compare", "demo"), _results_folder),
    "plot": (("compare", "demo", "stats"), _results_folder),
    "demo": ((), _results_folder),
    "segment": (("compare", "demo"), lambda f: {p.name for p in f.iterdir()} <= {"labels", "excluded.csv"}),
    "train": ((), _has("lowres.json", "sr.json", "lowres-state.json", "sr-state.json", "lowres-loss.csv",
                       "sr-loss.csv")),
}


@contextmanager
def output_folder(folder: Path, command: str) -> Iterator[Path]:
    """Check that ``folder`` may take the output of ``command`` (see ``provenance.claim_folder``), hold its lock
    while the block runs and mark it as this tool's (``plot`` only redraws: it leaves the maker's marker)."""
    from ..provenance import claim_folder, folder_lock

    accept, legacy = OUTPUT_KINDS[command]
    claim_folder(folder, command, accept, legacy, write=False)  # refuse before creating anything
    with folder_lock(folder, command):
        claim_folder(folder, command, accept, legacy, write=command != "plot", argv=INVOCATION)
        yield folder


def cohort_inputs(cohort: Cohort) -> list[Path]:
    """Every file a loaded cohort reads: its index (cohort.csv or the metadata CSV), the records beside it, and
    each case's CT, PET, labels and lesions."""
    from ..cohort.autopet import find_metadata

    root = Path(cohort.root)
    paths = [root / name for name in ("cohort.csv", "generate.json", "phantom.json", "truth.csv")]
    meta = find_metadata(root) if cohort.layout != "ours" else None
    paths += [meta] if meta is not None else []
    for case in cohort.cases:
        paths += [Path(p) for p in (case.ct, case.pet, case.labels, case.lesions) if p]
    return paths


def protect(outputs: Iterable[Path], *cohorts: Cohort) -> None:
    """InputError when an output path is a file one of ``cohorts`` reads (inputs are never written)."""
    from ..provenance import refuse_inputs

    for cohort in cohorts:
        refuse_inputs(outputs, cohort_inputs(cohort), f"the cohort {cohort.root}")


def _parse(func: Callable, value, what: str):
    """Parse an option value; a ValueError becomes an InputError naming the option."""
    try:
        return func(value)
    except ValueError as exc:
        raise InputError(str(exc), what) from None


def _command(name: str | None = None, **kw) -> Callable:
    def register(func: Callable) -> Callable:
        return app.command(name, cls=_Command, **kw)(_friendly(func))
    return register


def _print_version(value: bool) -> None:
    if value:
        print(__version__)
        raise typer.Exit(0)


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", is_eager=True, callback=_print_version,
                                                help="Print the version and exit.")] = False) -> None:
    """Generate synthetic whole-body FDG PET/CT and judge it against real scans, organ by organ."""
