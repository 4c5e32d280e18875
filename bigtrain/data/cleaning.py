"""Cleaning in ``bigtrain data shard``: filters and exact deduplication of documents. All off by default.

Off by default because turning any of it on changes which documents enter the shards (and so every
sample, the validation split and the embedded dataset's bytes); a user opts in per option, and the
options are part of what makes a dataset "up to date".

Per document, in this order (a removed document is counted under the first rule that removed it):

1. ``undecodable``: with ``drop_undecodable``, a document that is not valid UTF-8 is dropped and
   counted instead of stopping the run with an error naming file and line (the default policy).
2. empty documents are skipped, as always (not counted: they never were documents).
3. ``too_short`` / ``too_long``: fewer than ``min_chars`` / more than ``max_chars`` characters
   (``max_chars`` 0: no limit).
4. ``non_letter``: among the non-whitespace characters, the share that are not letters (Unicode
   category L*, as ``[^\\W\\d_]`` matches) is above ``max_non_letter`` (1.0: no limit). Catches tables
   of numbers, base64, markup soup.
5. ``duplicates`` (``dedup``): a document whose *normalised* text equals an earlier document's, over
   all inputs in input order, is dropped; the first occurrence stays. Normalised = NFKC, casefolded,
   whitespace runs collapsed to one space, stripped. Documents are compared by a 128-bit blake2b of the
   normalised text (collision odds ~n²/2^129: nil). The tokenizer workers hash, the single consuming
   process keeps the set of hashes in input order, so the result is the same for any ``--workers``.
   Memory: ~100 bytes per distinct document kept in the set (10 M documents ≈ 1 GB).

Steps 1, 3 and 4 run in the tokenizer workers; the counts are summed in input order and recorded in
the manifest (``cleaning``) and printed by the command.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import asdict, dataclass

LETTER = re.compile(r"[^\W\d_]")
SPACE = re.compile(r"\s")
REASONS = ("undecodable", "too_short", "too_long", "non_letter", "duplicates")


@dataclass(frozen=True)
class CleaningOptions:
    dedup: bool = False
    min_chars: int = 0
    max_chars: int = 0  # 0 = no limit
    max_non_letter: float = 1.0  # 1.0 = no limit
    drop_undecodable: bool = False

    @property
    def active(self) -> bool:
        return self != CleaningOptions()

    def to_dict(self) -> dict:
        return asdict(self)

    def check(self) -> None:
        from bigtrain.data.errors import DataError

        if self.min_chars < 0 or self.max_chars < 0:
            raise DataError(f"min_chars and max_chars must be >= 0, got {self.min_chars} and {self.max_chars}")
        if self.max_chars and self.max_chars < self.min_chars:
            raise DataError(f"max_chars {self.max_chars} is below min_chars {self.min_chars}")
        if not 0 <= self.max_non_letter <= 1:
            raise DataError(f"max_non_letter must be in [0, 1], got {self.max_non_letter}")


def non_letter_share(text: str) -> float:
    """Share of the non-whitespace characters that are not letters (0 for all-whitespace text)."""
    visible = len(text) - SPACE.subn("", text)[1]
    if visible == 0:
        return 0.0
    return 1.0 - LETTER.subn("", text)[1] / visible


def filter_reason(text: str, opts: CleaningOptions) -> str | None:
    """Why the filters (steps 3 and 4) remove ``text``, or None to keep it."""
    if len(text) < opts.min_chars:
        return "too_short"
    if opts.max_chars and len(text) > opts.max_chars:
        return "too_long"
    if opts.max_non_letter < 1.0 and non_letter_share(text) > opts.max_non_letter:
        return "non_letter"
    return None


def normalise(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def dedup_key(text: str) -> int:
    """128-bit hash of the normalised text (module doc, step 5)."""
    return int.from_bytes(hashlib.blake2b(normalise(text).encode("utf-8", "surrogatepass"), digest_size=16).digest(),
                          "little")


def no_removals() -> dict[str, int]:
    return dict.fromkeys(REASONS, 0)


def describe(removed: dict[str, int]) -> str:
    """``"12 duplicates, 3 too_short"`` (nonzero counts), or ``"nothing"``."""
    parts = [f"{n} {reason}" for reason, n in removed.items() if n]
    return ", ".join(parts) or "nothing"
