"""``cryblock`` command line: one click group; each stage registers its commands.

User mistakes (:class:`cryblock.errors.CryblockError`) print one ``error: …`` line and exit 2,
never a traceback; so does an operating-system error on a named path that slipped past the
checks (a name too long, permission denied, …): it is about the user's file, not a bug.
"""
from __future__ import annotations

import sys

import click

from cryblock import __version__
from cryblock.errors import CryblockError, short_path


class _Group(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except CryblockError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(2)
        except OSError as e:
            if not e.filename:
                raise
            click.echo(f"error: {short_path(e.filename)}: {e.strerror or e}", err=True)
            sys.exit(2)


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="cryblock")
def cli() -> None:
    """YAMNet → tiny INT8 audio detector: features, train, build, flash, monitor."""


def _register() -> None:
    from . import deploy_cmds, device_cmds, dsp_cmds, hub_cmds, learn_cmds

    for mod in (dsp_cmds, learn_cmds, deploy_cmds, device_cmds, hub_cmds):
        mod.register(cli)


_register()


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="cryblock")


if __name__ == "__main__":
    main()
