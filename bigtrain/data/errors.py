"""The one exception type of the data pipeline."""

from __future__ import annotations

from bigtrain.errors import UserError


class DataError(UserError, ValueError):
    """Bad input data or a missing/invalid data artefact (tokenizer dir, shard dir, manifest).

    The message always names the file (and line or byte offset where one applies), so the CLI prints
    it as one ``error:`` line and the user knows what to fix.
    """
