"""The one exception type of the data pipeline."""

from __future__ import annotations

from bigtrain.errors import UserError


class DataError(UserError, ValueError):
    """Bad input data or a missing/invalid data artefact (tokenizer dir, shard dir, manifest).

    The message always names the file (and line or byte offset where one applies), so the CLI prints
    it as one ``error:`` line and the user knows what to fix.
    """


class CorruptShardError(DataError):
    """A shard that cannot be read as its manifest describes it: missing, truncated, damaged headers or
    a sha256 mismatch. ``path`` names the file; the loader's ``data.on_corrupt`` policy decides what
    happens to its samples."""

    def __init__(self, path, message: str):
        super().__init__(message)
        self.path = str(path)


class DataStop(DataError):
    """Training stopped on a corrupt shard (``data.on_corrupt=stop``), agreed by every rank."""

    agreed = True
