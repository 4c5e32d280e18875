"""The embedded default corpus: prose that ships with every Python install.

Documents, in a fixed order: every module, class and function docstring of the standard library's
``.py`` files (read with :mod:`ast`, never imported: importing ``antigravity`` opens a browser, ``this``
prints), walked in sorted path order; then the ``pydoc_data.topics`` help texts in sorted key order.
Third-party and test code is skipped so the text is the same on every install of one Python version
(≈2.1 MB, ≈7.5k documents on CPython 3.11). It needs no download, so the debug recipe and the tests
train on real English + code text anywhere.
"""

from __future__ import annotations

import ast
import json
import os
import sysconfig
from pathlib import Path
from typing import Iterator

SKIP_DIRS = frozenset({"site-packages", "dist-packages", "test", "tests", "idlelib", "lib2to3", "__pycache__"})
DOC_NODES = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
BODY_NODES = (ast.stmt, ast.excepthandler, ast.match_case)  # the only places a def can appear
MIN_CHARS = 20


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def source_files(root: Path) -> list[Path]:
    """``.py`` files under ``root`` outside SKIP_DIRS, sorted by path components."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):  # does not follow symlinked directories
        dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS]
        found += [Path(dirpath, name) for name in filenames if name.endswith(".py")]
    return sorted(found, key=lambda p: p.relative_to(root).parts)


def docstrings(tree: ast.Module) -> Iterator[str]:
    """Docstrings of the module and every class/def in it, pre-order in source order.

    Iterative and restricted to statement nodes: recursing through expressions can hit the recursion
    limit on long generated expressions, and no def lives inside an expression.
    """
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, DOC_NODES):
            doc = ast.get_docstring(node)  # cleaned: common indentation removed
            if doc:
                yield doc
        children = [c for c in ast.iter_child_nodes(node) if isinstance(c, BODY_NODES)]
        stack.extend(reversed(children))


def file_docstrings(path: Path) -> list[str]:
    """Docstrings of one file; none if it does not parse (e.g. a template with placeholders)."""
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except (SyntaxError, ValueError, OSError, RecursionError):  # null bytes, unreadable, absurdly deep
        return []
    return list(docstrings(tree))


def pydoc_topics() -> list[str]:
    try:
        from pydoc_data.topics import topics  # a plain dict literal: importing it runs nothing else
    except ImportError:  # some distributions split it out of the stdlib package
        return []
    return [topics[key] for key in sorted(topics)]


def keep(doc: str) -> bool:
    """Long enough to be prose, and valid Unicode (a docstring may hold lone surrogates via escapes)."""
    if len(doc) < MIN_CHARS:
        return False
    try:
        doc.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def embedded_documents(root: Path | None = None) -> Iterator[str]:
    """The embedded corpus, deterministic for a given Python install. ``root`` overrides the stdlib dir."""
    for path in source_files(root or stdlib_dir()):
        yield from filter(keep, file_docstrings(path))
    yield from filter(keep, pydoc_topics())


def write_embedded_corpus(path: str | Path) -> Path:
    """Write the corpus as JSONL ``{"text": ...}`` lines; atomic (temp file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            for doc in embedded_documents():
                f.write(json.dumps({"text": doc}, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
