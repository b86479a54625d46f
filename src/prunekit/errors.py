"""Errors raised for user mistakes: each names the problem and the way out."""

from __future__ import annotations


class PrunekitError(Exception):
    """Base class of every error prunekit raises on purpose."""


class ConfigError(PrunekitError, ValueError):
    """A bad argument, recipe key or value: the message names it and the valid choices."""


class DataError(PrunekitError):
    """A dataset that is missing, truncated or in the wrong format."""


class TraceError(PrunekitError):
    """A model the tracer cannot follow."""
