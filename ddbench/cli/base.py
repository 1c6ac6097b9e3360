"""The ``ddbench`` command group, the options its commands share, and ``main``.

Exit status: 0 when the command did what it was asked, 1 when it ran but something it
ran failed (a cell of ``run``, a regression in ``check``, a setting of ``bench``), 2 for
bad input (a one-line error naming the bad value and the valid choices; nothing is
written), 130 when interrupted.
"""

from __future__ import annotations

import sys

import click

from ddbench import plan as planmod
from ddbench.errors import DDBenchError
from ddbench.plan import RunOptions
from ddbench.registry import load_registry
from ddbench.version import __version__

D = RunOptions()  # the defaults every option shows
# options that `run` and `experts` share (experts are built for what the same run needs)
DATASETS_OPTION = click.option(
    "--datasets", default=",".join(D.datasets), show_default=True,
    help="Comma list of datasets (name or name:ARG, e.g. imagefolder:PATH).")
SET_OPTION = click.option(
    "--set", "sets", multiple=True, metavar="NAME.PARAM=V[,V...]",
    help="Set a parameter (a comma list makes a sweep axis). Repeatable.")
PRESET_OPTION = click.option(
    "--preset", default=D.preset, show_default=True, type=click.Choice(planmod.PRESETS),
    help="Iteration budgets: 'small' for a CPU, 'paper' for the reference budgets.")
DATA_ROOT_OPTION = click.option("--data-root", default=None, help="Data folder [default: $DDBENCH_DATA or datasets/].")
DOWNLOAD_OPTION = click.option("--download", is_flag=True, help="Download missing datasets into the data root.")
DEVICE_OPTION = click.option("--device", default=D.device, show_default=True, help="auto, cpu, cuda or cuda:N.")


def _set_compile(ctx, param, value):
    if value is not None:
        from ddbench.runtime.compiling import set_mode

        set_mode(value)
    return value


COMPILE_OPTION = click.option(
    "--compile", "compile_mode", type=click.Choice(["auto", "on", "off"]), default=None, expose_value=False,
    callback=_set_compile,
    help="torch.compile the networks' first-order passes: auto = on for CPU and images of at least "
         "28x28 with a C++ compiler present [default: $DDBENCH_COMPILE or auto].")
CONDITIONS_OPTION = click.option(
    "--conditions", default=",".join(D.conditions), show_default=True,
    help="Comma list of data conditions: clean, zca (MTT's ZCA whitening), noise:RATE, "
         "noise-asym:RATE, imbalance:RATIO (training split only).")



def registry():
    """The registry, with a warning line per plugin that failed to load."""
    reg = load_registry()
    for f in reg.failures:
        click.echo(f"ddbench: warning: plugin {f.name!r} ({f.package}) failed to load: {f.error}", err=True)
    return reg


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ddbench")
def cli():
    """Benchmark dataset distillation methods: run sweeps, store results, compare."""



def one_line(text: str) -> str:
    """An error as the one line the convention promises, whatever user text it quotes (a
    file's key with a newline in it): line breaks shown as ``\\n``."""
    return text.strip().replace("\r", "\\r").replace("\n", "\\n")


def main(argv=None) -> None:
    try:
        argv = sys.argv[1:] if argv is None else list(argv)
        cli.main(args=argv, prog_name="ddbench", standalone_mode=False, obj={"argv": argv})
    except DDBenchError as exc:
        click.echo(f"ddbench: error: {one_line(str(exc))}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("ddbench: interrupted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        click.echo(f"ddbench: error: {one_line(exc.format_message())}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("\nddbench: interrupted; finished cells are stored, run again to resume", err=True)
        sys.exit(130)
