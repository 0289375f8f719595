"""The ``deepdiag`` command: parses arguments and calls the library, nothing more."""
from __future__ import annotations

from typing import Annotated

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Diagnose PyTorch networks and reproduce the textbook claims about them.")


@app.callback()
def main() -> None:
    """deepdiag: why won't my network train, and is what the textbooks say true?"""


@app.command()
def demo(
    epochs: Annotated[int, typer.Option(min=1, help="training epochs")] = 8,
    seed: Annotated[int, typer.Option(min=0, help="seed for init, shuffling and split")] = 0,
) -> None:
    """Train a small MLP on the digits set and print train/val loss and accuracy per epoch."""
    import torch

    from .demo import run_demo

    torch.set_num_threads(min(2, torch.get_num_threads()))
    run_demo(epochs=epochs, seed=seed, print_fn=typer.echo)
