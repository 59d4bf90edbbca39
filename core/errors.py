"""The small error hierarchy every adapter translates library errors into.

`exit_code` is what `lookout run` exits with when the error stops the daemon. Restarting does
not mend a bad configuration or an unusable database: systemd/lookout.service lists those
codes in `RestartPreventExitStatus=` (tests/monitor/test_systemd_unit.py keeps the two in step).
"""


class LookoutError(Exception):
    """Base of every error lookout raises on purpose."""

    exit_code = 1


class ConfigError(LookoutError):
    """The configuration is invalid; the message names the offending key."""

    exit_code = 78  # EX_CONFIG (sysexits.h)


class BusError(LookoutError):
    """The message bus is unreachable or refused us."""


class StoreError(LookoutError):
    """The store could not be read or written."""


class DatabaseError(StoreError):
    """A database file cannot be opened as one: corrupt, not a database, or not writable."""

    exit_code = 65  # EX_DATAERR (sysexits.h)
