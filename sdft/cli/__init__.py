"""The `sdft` command line: training and data commands from the library, plus the service
commands (`api`, `worker`, `db`, `keys`, `up`) when the service packages are installed."""

from __future__ import annotations

import logging

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Self-Distillation Fine-Tuning")


def _register_commands() -> None:
    from sdft.cli import dataset, models, train

    train.register(app)
    models.register(app)
    dataset.register(app)
    try:
        from api import cli as service_cli
        from api import up as up_cli
    except ImportError:
        # The library can be installed without the service packages.
        return
    service_cli.register(app)
    up_cli.register(app)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _register_commands()
    app()
