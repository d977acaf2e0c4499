"""The one base class of errors whose message is the whole story for a user (bad data, a
missing metrics file, a diverged loss, a run that cannot be resumed as asked): the CLI prints
them without a traceback. Programming errors stay ordinary exceptions."""

from __future__ import annotations

__all__ = ["RapError"]


class RapError(Exception):
    """A user-facing error; its message names the file, key, value or rank concerned."""
