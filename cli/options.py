"""Command-line plumbing shared by the stages: :class:`~cryblock.params.Params` fields as flags.

A stage lists the fields it exposes as ``(flag, field, type, help)`` rows; :func:`field_options`
turns the rows into click options (value under the field's name, None when the flag is not
given) and :func:`params_with` applies the given ones on top of an optional params.json.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import click


def field_options(rows: Sequence[tuple[str, str, Any, str]]) -> Callable:
    """Click decorator adding one option per ``(flag, field, type, help)`` row, in row order."""
    def decorate(f: Callable) -> Callable:
        for flag, name, typ, help_ in reversed(rows):
            f = click.option(flag, name, type=typ, default=None, help=help_)(f)
        return f
    return decorate


def params_with(params_file: str | Path | None, section: str, overrides: dict[str, Any]):
    """:class:`~cryblock.params.Params` from ``params_file`` (defaults when None) with the
    ``overrides`` that are not None applied to ``section`` (``"dsp"``, ``"learn"``).

    Raises:
        ParameterError: bad file or out-of-range value (names the parameter).
    """
    from cryblock.params import Params

    p = Params.load(params_file) if params_file else Params()
    upd = {k: v for k, v in overrides.items() if v is not None}
    return p.replace(**{section: upd}) if upd else p
