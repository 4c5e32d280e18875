"""Write safetensors files one tensor at a time, so an export never holds the whole model.

The safetensors format is an 8-byte little-endian header length, a JSON header naming each
tensor's dtype, shape and byte range, then the raw bytes. Since every shape is known before any
data is read (from the checkpoint's ``param_shapes``), the header is written first and each tensor
is appended as soon as it is produced, then dropped.

Sharding follows Hugging Face: tensors are packed in order into files of at most ``max_bytes``
(``model-00001-of-0000N.safetensors``) listed by ``model.safetensors.index.json``; a model that
fits one file is ``model.safetensors``.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

DTYPE_NAMES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16"}


@dataclass(frozen=True)
class Entry:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * torch.empty((), dtype=self.dtype).element_size()


def plan_files(entries: list[Entry], max_bytes: int, stem: str = "model") -> list[tuple[str, list[Entry]]]:
    """Pack ``entries`` in order into files of at most ``max_bytes`` (a bigger tensor gets its own)."""
    groups: list[list[Entry]] = [[]]
    size = 0
    for entry in entries:
        if groups[-1] and size + entry.nbytes > max_bytes:
            groups.append([])
            size = 0
        groups[-1].append(entry)
        size += entry.nbytes
    if len(groups) == 1:
        return [(f"{stem}.safetensors", groups[0])]
    n = len(groups)
    return [(f"{stem}-{i + 1:05d}-of-{n:05d}.safetensors", g) for i, g in enumerate(groups)]


def header_bytes(entries: list[Entry], metadata: dict[str, str]) -> bytes:
    header: dict = {"__metadata__": metadata}
    offset = 0
    for e in entries:
        header[e.name] = {"dtype": DTYPE_NAMES[e.dtype], "shape": list(e.shape), "data_offsets": [offset, offset + e.nbytes]}
        offset += e.nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data section starts 8-byte aligned
    return struct.pack("<Q", len(text)) + text


class SafetensorsWriter:
    """``write(name, tensor)`` in the planned order; ``close()`` checks all were written (+ the index)."""

    def __init__(self, folder: Path, entries: list[Entry], max_bytes: int, stem: str = "model",
                 metadata: dict[str, str] | None = None):
        self.folder = Path(folder)
        self.files = plan_files(entries, max_bytes, stem)
        self.stem = stem
        self.metadata = metadata or {"format": "pt"}
        self.queue = [(file, e) for file, group in self.files for e in group]
        self.done = 0
        self.handle = None
        self.current: str | None = None

    def write(self, name: str, tensor: Tensor) -> None:
        if self.done >= len(self.queue):
            raise AssertionError(f"{name}: more tensors than planned")
        file, entry = self.queue[self.done]
        if name != entry.name or tuple(tensor.shape) != entry.shape or tensor.dtype != entry.dtype:
            raise AssertionError(f"expected {entry}, got {name} {tuple(tensor.shape)} {tensor.dtype}")
        if file != self.current:
            self.open(file)
        data = tensor.detach().contiguous().view(-1).view(torch.uint8)  # raw little-endian bytes
        self.handle.write(memoryview(data.numpy()))
        self.done += 1

    def open(self, file: str) -> None:
        if self.handle is not None:
            self.handle.close()
        entries = next(group for name, group in self.files if name == file)
        self.handle = open(self.folder / file, "wb")
        self.handle.write(header_bytes(entries, self.metadata))
        self.current = file

    def close(self) -> list[str]:
        """Finish the last file; write the index when there are several. -> the file names."""
        if self.handle is not None:
            self.handle.close()
            self.handle = None
        if self.done != len(self.queue):
            raise AssertionError(f"{len(self.queue) - self.done} planned tensors were never written")
        if len(self.files) > 1:
            index = {"metadata": {"total_size": sum(e.nbytes for _, e in self.queue)},
                     "weight_map": {e.name: file for file, e in self.queue}}
            (self.folder / f"{self.stem}.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
        return [name for name, _ in self.files]
