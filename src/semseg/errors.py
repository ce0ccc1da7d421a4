"""Errors that are the user's to fix: each message names the file or config key and the fix.

Entry points print these without a traceback; anything else is a bug and keeps its traceback.
"""


class SemsegError(ValueError):
    """A problem in the user's data or configuration."""


class DataError(SemsegError):
    """A data set problem (a file, a folder, a mask value)."""


class ConfigError(SemsegError):
    """A configuration problem (a key, a name, an incompatible choice)."""
