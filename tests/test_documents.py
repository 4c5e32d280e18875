"""Reading documents: JSONL and text, gzip by magic, and errors that name the file and line."""

import gzip
import json

import pytest

from bigtrain.data.documents import iter_documents
from bigtrain.data.errors import DataError


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_jsonl_text_and_gzip(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [{"text": "one"}, {"text": ""}, {"text": "two", "id": 2}])
    (tmp_path / "a.jsonl").write_text(a.read_text() + "\n   \n")  # blank lines are skipped
    b = tmp_path / "b.json.gz"
    b.write_bytes(gzip.compress(b'{"content": "three"}\n'))
    c = tmp_path / "c.txt.gz"
    c.write_bytes(gzip.compress(b"whole file\nis one document\n"))
    d = tmp_path / "README"
    d.write_text("no suffix: one document")
    e = tmp_path / "empty.txt"
    e.write_text("")
    assert list(iter_documents([a, c, d, e])) == ["one", "two", "whole file\nis one document\n",
                                                  "no suffix: one document"]
    assert list(iter_documents([b], text_key="content")) == ["three"]
    assert list(iter_documents(str(a))) == ["one", "two"]  # a lone path, not its characters


@pytest.mark.parametrize("content, expected", [
    (b'{"text": "ok"}\n{"text": broken}\n', r"x\.jsonl:2: invalid JSON"),
    (b'{"text": "ok"}\n{"body": "no text"}\n', r"x\.jsonl:2: no key 'text' \(keys: 'body'\)"),
    (b'{"text": 5}\n', r"x\.jsonl:1: 'text' is int"),
    (b'["text"]\n', r"x\.jsonl:1: expected a JSON object"),
    (b'{"text": "ok"}\n{"text": "caf\xe9"}\n', r"x\.jsonl:2: invalid UTF-8 at byte offset 28"),
])
def test_jsonl_errors_name_file_and_line(tmp_path, content, expected):
    path = tmp_path / "x.jsonl"
    path.write_bytes(content)
    with pytest.raises(DataError, match=expected):
        list(iter_documents([path]))


def test_text_and_path_errors(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"abc\xff")
    with pytest.raises(DataError, match=r"bad\.txt: invalid UTF-8 at byte offset 3"):
        list(iter_documents([bad]))
    with pytest.raises(DataError, match=r"missing\.jsonl does not exist"):
        list(iter_documents([tmp_path / "missing.jsonl"]))
    (tmp_path / "dir").mkdir()  # a directory stands for the corpus files in it (tests/test_formats.py)
    with pytest.raises(DataError, match="input directory .*dir holds no corpus files"):
        list(iter_documents([tmp_path / "dir"]))
    truncated = tmp_path / "t.jsonl.gz"
    truncated.write_bytes(gzip.compress(b'{"text": "x"}\n' * 1000)[:50])
    with pytest.raises(DataError, match=r"t\.jsonl\.gz: cannot read"):
        list(iter_documents([truncated]))


def test_no_documents_at_all_is_an_error(tmp_path):
    empty = write_jsonl(tmp_path / "e.jsonl", [{"text": ""}])
    with pytest.raises(DataError, match=r"no documents in .*e\.jsonl"):
        list(iter_documents([empty]))
    with pytest.raises(DataError, match="no input files"):
        list(iter_documents([]))
