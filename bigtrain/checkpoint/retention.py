"""Which checkpoints to delete: keep the last K complete ones plus every M-th, never ``latest``.

Only rank 0 deletes, and only after the new checkpoint is complete and ``latest`` points at it.
A folder is deleted by first renaming it to ``.trash-<tag>`` (atomic), then removing the tree, so
a crash half-way through a deletion never leaves a folder that still looks complete; leftover
``.trash-*`` folders and incomplete ``step_*`` folders (no ``meta.json``: a save that was killed)
are removed at the same time.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

TAG = re.compile(r"^step_(\d{8})$")
TRASH_PREFIX = ".trash-"


def step_folders(root: Path) -> dict[int, Path]:
    """step -> folder, for every ``step_XXXXXXXX`` folder under ``root`` (complete or not)."""
    out = {}
    for path in root.iterdir() if root.is_dir() else []:
        match = TAG.match(path.name)
        if match and path.is_dir():
            out[int(match.group(1))] = path
    return out


def steps_to_delete(complete: list[int], latest: int, keep: int, keep_every: int) -> list[int]:
    """Complete checkpoints (by step) that retention removes. ``keep`` = 0 keeps everything."""
    if keep <= 0:
        return []
    newest = sorted(complete)[-keep:]
    protected = set(newest) | {latest} | {s for s in complete if keep_every and s % keep_every == 0}
    return sorted(s for s in complete if s not in protected)


def remove(folder: Path) -> None:
    trash = folder.with_name(TRASH_PREFIX + folder.name)
    if trash.exists():
        shutil.rmtree(trash)
    folder.rename(trash)
    shutil.rmtree(trash)


def apply_retention(root: Path, latest: int, keep: int, keep_every: int, meta_name: str) -> list[Path]:
    """Delete incomplete folders, leftover trash and retired checkpoints; return what was removed."""
    removed = []
    for leftover in root.glob(TRASH_PREFIX + "*"):
        shutil.rmtree(leftover, ignore_errors=True)
    folders = step_folders(root)
    complete = [s for s, f in folders.items() if (f / meta_name).exists()]
    incomplete = [s for s, f in folders.items() if not (f / meta_name).exists() and s != latest]
    for step in incomplete + steps_to_delete(complete, latest, keep, keep_every):
        remove(folders[step])
        removed.append(folders[step])
    return removed
