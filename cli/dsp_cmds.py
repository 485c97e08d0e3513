"""CLI commands of this stage (filled in by its owner)."""
import click


def register(group: click.Group) -> None:
    """Add this module's commands to the ``cryblock`` group."""
