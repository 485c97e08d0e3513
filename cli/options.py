"""Command-line plumbing shared by the stages: :class:`~cryblock.params.Params` fields as flags.

A stage lists the fields it exposes as ``(flag, "section.field", type, help)`` rows (section one
of Params' sections: dsp, learn, augment, night, detector); :func:`field_options` turns the rows
into click options (value under ``section__field``, None when the flag is not given) and
:func:`params_with` applies the given ones on top of an optional params.json.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Sequence

import click


class FiniteFloat(click.FloatRange):
    """``click.FloatRange`` that also refuses NaN and ±inf (``nan`` passes FloatRange: every
    comparison with it is false)."""

    name = "float"

    def convert(self, value, param, ctx):
        rv = super().convert(value, param, ctx)
        if not math.isfinite(rv):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return rv


def _dest(path: str) -> str:
    return path.replace(".", "__")


def field_options(rows: Sequence[tuple[str, str, Any, str]]) -> Callable:
    """Click decorator adding one option per ``(flag, section.field, type, help)`` row, in row order."""
    def decorate(f: Callable) -> Callable:
        for flag, path, typ, help_ in reversed(rows):
            f = click.option(flag, _dest(path), type=typ, default=None, help=help_)(f)
        return f
    return decorate


def split_overrides(values: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``{"augment__p_mix": 0.5, "learn__epochs": None}`` → ``{"augment": {"p_mix": 0.5}}`` (given
    values only; :func:`cryblock.blocks.learn.flags.overrides`)."""
    from cryblock.blocks.learn.flags import overrides

    return overrides(values)


def params_with(params_file: str | Path | None, overrides: dict[str, Any]):
    """:class:`~cryblock.params.Params` from ``params_file`` (defaults when None) with the given
    ``overrides`` (:func:`field_options` values, or ``{section: {field: value}}``) applied.

    Raises:
        ParameterError: bad file or out-of-range value (names the parameter).
    """
    from cryblock.params import Params

    p = Params.load(params_file) if params_file else Params()
    upd = overrides if all(isinstance(v, dict) for v in overrides.values()) else split_overrides(overrides)
    upd = {k: v for k, v in upd.items() if v}
    return p.replace(**upd) if upd else p
