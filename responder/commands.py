"""Subcommands that plugins add to the ``responder`` command line."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from responder.app import App


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    run: Callable[[App, argparse.Namespace], int]
    setup: Callable[[argparse.ArgumentParser], None] | None = None
    plugin: str = ""


class CommandRegistry:
    """Collects commands from ``responder_register_commands``."""

    def __init__(self, reserved: tuple[str, ...] = ()) -> None:
        self.commands: dict[str, Command] = {}
        self.plugin = ""
        self._reserved = reserved

    def add(
        self,
        name: str,
        *,
        help: str,
        run: Callable[[App, argparse.Namespace], int],
        setup: Callable[[argparse.ArgumentParser], None] | None = None,
    ) -> None:
        """Add ``responder NAME``; ``run(app, args)`` gets an App built from ``-c FILE``."""
        if name in self.commands or name in self._reserved:
            raise ValueError(f"the command {name!r} is already taken")
        self.commands[name] = Command(
            name=name, help=help, run=run, setup=setup, plugin=self.plugin
        )
