"""The small error hierarchy every adapter translates library errors into."""


class LookoutError(Exception):
    """Base of every error lookout raises on purpose."""


class ConfigError(LookoutError):
    """The configuration is invalid; the message names the offending key."""


class BusError(LookoutError):
    """The message bus is unreachable or refused us."""


class StoreError(LookoutError):
    """The store could not be read or written."""
