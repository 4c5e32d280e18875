"""The embedded corpus: stdlib docstrings + pydoc topics, deterministic, read without importing anything."""

import json
import subprocess
import sys

from bigtrain.data.corpus import embedded_documents, file_docstrings, pydoc_topics, source_files, \
    write_embedded_corpus


def test_corpus_is_deterministic_and_about_two_megabytes(tmp_path):
    docs = list(embedded_documents())
    path = write_embedded_corpus(tmp_path / "sub" / "corpus.jsonl")
    with open(path, encoding="utf-8") as f:
        written = [json.loads(line)["text"] for line in f]
    assert written == docs  # a second extraction gives the same documents in the same order
    size = sum(len(d.encode()) for d in docs)
    assert 1_500_000 < size < 4_000_000, size
    assert len(docs) > 5000
    assert min(map(len, docs)) >= 20
    assert [p.name for p in tmp_path.joinpath("sub").iterdir()] == ["corpus.jsonl"]  # no temp file left


def test_pydoc_topics_come_last_in_key_order():
    docs = list(embedded_documents())
    topics = [t for t in pydoc_topics() if len(t) >= 20]
    assert len(topics) > 50
    assert docs[-len(topics):] == topics


def test_walk_skips_tests_third_party_and_broken_files(tmp_path):
    files = {
        "b.py": '"""Module b docstring, long enough."""',
        "a/z.py": '"""Module a.z docstring, long enough."""',
        "a/test/t.py": '"""A test module docstring, skipped."""',
        "tests/t.py": '"""A tests module docstring, skipped."""',
        "site-packages/x.py": '"""Third-party docstring, skipped."""',
        "idlelib/i.py": '"""IDLE docstring, skipped entirely."""',
        "lib2to3/l.py": '"""lib2to3 docstring, skipped entirely."""',
        "broken.py": '"""Never seen: the file does not parse."""\ndef (:',
        "a.py": '"""Module a docstring, long enough."""',
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    found = [p.relative_to(tmp_path).as_posix() for p in source_files(tmp_path)]
    assert found == ["a/z.py", "a.py", "b.py", "broken.py"]  # sorted by path components
    assert list(embedded_documents(tmp_path))[:3] == ["Module a.z docstring, long enough.",
                                                      "Module a docstring, long enough.",
                                                      "Module b docstring, long enough."]


def test_docstrings_in_source_order_including_nested_and_conditional_defs(tmp_path):
    path = tmp_path / "m.py"
    path.write_text('"""module"""\n'
                    'class C:\n    """class C"""\n    def m(self):\n        """method m"""\n'
                    '        def inner():\n            """inner"""\n'
                    'if True:\n    async def f():\n        """async f"""\n'
                    'try:\n    pass\nexcept Exception:\n    def g():\n        """g in handler"""\n'
                    'x = ' + '+'.join(['1'] * 500) + '\n')  # a deep expression: the walk is not recursive
    assert file_docstrings(path) == ["module", "class C", "method m", "inner", "async f", "g in handler"]


def test_files_too_deep_to_parse_are_skipped(tmp_path):
    path = tmp_path / "deep.py"
    path.write_text('"""doc"""\nx = ' + '+'.join(['1'] * 100_000) + '\n')
    assert file_docstrings(path) == []


def test_extraction_does_not_import_the_modules_it_reads():
    code = ("import json, sys; from bigtrain.data.corpus import embedded_documents\n"
            "before = set(sys.modules); n = sum(1 for _ in embedded_documents())\n"
            "print(json.dumps([n, sorted(set(sys.modules) - before)]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    count, imported = json.loads(out)  # `this` would also have printed the Zen of Python first
    assert count > 5000
    assert not {"this", "antigravity", "webbrowser", "turtle", "tkinter", "asyncio", "email"} & set(imported)
    assert len(imported) < 40, imported  # ast/inspect helpers only; importing the stdlib would be >500
