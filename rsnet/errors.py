"""User-facing errors.

An :class:`RsnetError` is a mistake the user can fix (a setting, a missing file). The
command-line entry points print its message on one line and exit with status 2 instead of
showing a traceback.
"""

from __future__ import annotations


class RsnetError(Exception):
    """An error caused by input or configuration; its message names the setting to change."""
