"""The one exception type for bad user input: the CLI prints its message on one line and exits 2.

Layer L0. Raise ``InputError`` (a ``ValueError``) with a message that names the file or
record at fault; never let a traceback reach a user for input they can fix.
"""

from __future__ import annotations


class InputError(ValueError):
    """Bad input a user can fix (a file, a record, an argument). Message: one line."""
