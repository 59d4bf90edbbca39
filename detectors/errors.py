"""Errors the detectors raise: bad input or use, never I/O."""

from __future__ import annotations

from lookout.errors import LookoutError


class DetectorError(LookoutError, ValueError):
    """A detector was given something it cannot work with."""


class NotFitted(DetectorError):
    """Scored before a reference was fitted."""
