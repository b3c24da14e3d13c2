"""Errors a user can cause, and the "did you mean" helper every name lookup uses."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class ConfigError(ValueError):
    """A mistake in user input (recipe, CLI argument, file). The CLI prints one line, exit 2."""


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """Return ' (did you mean 'x'?)' for the closest choice, or '' when nothing is close."""
    close = difflib.get_close_matches(str(name), list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def unknown_name(kind: str, name: str, choices: Iterable[str]) -> ConfigError:
    """The standard error for a lookup by name that missed: names the bad value and the choices."""
    choices = sorted(choices)
    return ConfigError(
        f"unknown {kind} '{name}'{did_you_mean(name, choices)}; choose from: {', '.join(choices)}"
    )


class TrainingError(RuntimeError):
    """A run that cannot go on (a non-finite loss, say). The CLI prints it as one line, exit 1."""
