"""The checkpoint error type (own module so every checkpoint module can raise it without cycles)."""

from bigtrain.errors import UserError


class CheckpointError(UserError, RuntimeError):
    """A checkpoint is missing, incomplete or does not match the run."""
