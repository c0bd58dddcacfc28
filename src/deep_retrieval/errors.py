"""Exceptions for mistakes a user can make (bad files, ids, configs, outputs, requests).

``DRError`` is the base: the CLI prints ``error: <message>`` on one line and exits with
code 2 for it; anything else is a bug and keeps its traceback. Each subclass also
subclasses the builtin it refines, so a caller can catch either::

    InvalidInputError     ValueError         a bad value: ids, histories, options
    DRFileNotFoundError   FileNotFoundError  an input file or directory is missing
    OutputExistsError     FileExistsError    an output target holds something we must not replace
    OutputNotWritableError PermissionError   an output target cannot be written
    NotFittedError        RuntimeError       a model used before ``fit`` / ``load``
"""


class DRError(Exception):
    """A user-facing error: the message is one line that names the problem."""


class InvalidInputError(DRError, ValueError):
    """A value the user gave is wrong (an id, a history, an option, a config key)."""


class DRFileNotFoundError(DRError, FileNotFoundError):
    """An input file or directory does not exist."""


class OutputExistsError(DRError, FileExistsError):
    """An output target exists and is not ours to replace (or needs ``--force``)."""


class OutputNotWritableError(DRError, PermissionError):
    """An output target (or the directory it goes in) cannot be written."""


class NotFittedError(DRError, RuntimeError):
    """A model or baseline was used before ``fit`` or ``load``."""
