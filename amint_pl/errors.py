"""Errors a user can cause. Each carries a one-line message that names the fix.

Entry points (`run`, `audit`, `aggregate`) catch `AmintError`, print its message on one line to
stderr and exit with code 2; deeper code raises these and never prints.
"""


class AmintError(Exception):
    """Base class: a problem the user can fix (config, files, checkpoints)."""


class ConfigError(AmintError):
    """A bad override or an inconsistent configuration."""


class DataNotFoundError(AmintError):
    """A data set's files are missing."""


class CorruptDataError(AmintError):
    """A data file exists but cannot be read."""


class SplitError(AmintError):
    """Membership splits that cannot be built or do not match what was saved."""


class CheckpointError(AmintError):
    """A checkpoint that amint_pl did not write, or one that was changed."""
