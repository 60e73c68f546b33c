"""Exceptions raised by alignfuse. Each names the argument or file at fault."""

from __future__ import annotations


class AlignfuseError(Exception):
    """Base class of every error alignfuse raises on purpose."""


class ConfigError(AlignfuseError, ValueError):
    """A configuration key or value is invalid."""


class DataError(AlignfuseError, ValueError):
    """A dataset folder, annotation file or image is missing or malformed."""


class CheckpointError(AlignfuseError, RuntimeError):
    """A checkpoint is missing, truncated or does not match its recorded checksum."""


class TrainingDivergedError(AlignfuseError, RuntimeError):
    """The loss became NaN or infinite during training."""


class ConvergenceWarning(UserWarning):
    """An iterative solver stopped at its iteration limit before reaching its tolerance."""
