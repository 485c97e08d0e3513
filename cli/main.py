"""``cryblock`` command line: one click group; each stage registers its commands.

User mistakes (:class:`cryblock.errors.CryblockError`, click's usage errors) print one ``error: …``
line and exit 2, never a traceback; so does an operating-system error on a named path that
slipped past the checks (a name too long, permission denied, …) and a full disk: they are about
the user's files, not a bug.
"""
from __future__ import annotations

import errno
import sys

import click

from cryblock import __version__
from cryblock.errors import CryblockError, one_line, short_path


#: errno values of a write that found no room: a full disk, a quota, a file-size limit.
_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


class _Group(click.Group):
    def main(self, *args, standalone_mode: bool = True, **kwargs):
        """click's entry, with every usage mistake (a value out of range, an unknown option or
        command, a missing argument) as one ``error: …`` line and exit status 2 instead of click's
        usage block; ``--help``, ``--version`` and the commands' own exits are click's."""
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            rv = super().main(*args, standalone_mode=False, **kwargs)
        except click.exceptions.NoArgsIsHelpError as e:  # plain `cryblock`: the help, as click shows it
            click.echo(e.format_message(), err=True)
            sys.exit(2)
        except click.UsageError as e:
            hint = f" (see '{e.ctx.command_path} --help')" if e.ctx is not None else ""
            click.echo(f"error: {one_line(e.format_message())}{hint}", err=True)
            sys.exit(2)
        except click.ClickException as e:
            click.echo(f"error: {one_line(e.format_message())}", err=True)
            sys.exit(e.exit_code)
        except click.Abort:
            click.echo("error: aborted", err=True)
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)  # an int is click's exit code (--help, --version, ctx.exit)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except CryblockError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(2)
        except OSError as e:
            if e.filename:
                click.echo(f"error: {short_path(e.filename)}: {e.strerror or e}", err=True)
            elif e.errno in _FULL:  # a write that ran out of room: the outputs are written atomically
                click.echo(f"error: cannot write the output ({e.strerror}); nothing was replaced", err=True)
            else:
                raise
            sys.exit(2)


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="cryblock")
def cli() -> None:
    """YAMNet → tiny INT8 audio detector: features, train, build, flash, monitor."""


def _register() -> None:
    from . import dataset_cmds, deploy_cmds, device_cmds, dsp_cmds, hub_cmds, learn_cmds

    for mod in (dsp_cmds, dataset_cmds, learn_cmds, deploy_cmds, device_cmds, hub_cmds):
        mod.register(cli)


_register()


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="cryblock")


if __name__ == "__main__":
    main()
