"""The parsed prelude kept in __pycache__/ and decoded once a process: every way in gives the
syntax that parsing gives."""

from __future__ import annotations

import shutil

import pytest

from resdsl import prelude_cache
from resdsl.definitions import PRELUDE
from resdsl.diagnostics import Report
from resdsl.parse import parse_text


@pytest.fixture
def prelude(tmp_path, monkeypatch):
    """A copy of the prelude in a directory of its own, with this process's memory cleared."""
    monkeypatch.setattr(prelude_cache, "_decoded", {})
    path = tmp_path / "prelude.res"
    shutil.copy(PRELUDE, path)
    return path


def parsed(path):
    return parse_text(path.read_text(), str(path), Report())


def refuse(*_):
    raise AssertionError("parsed again")


def test_a_parse_is_written_beside_the_file_and_read_back_as_parsed(prelude, monkeypatch):
    first = prelude_cache.load(prelude, parse_text)
    assert first == parsed(prelude)
    (cache,) = (prelude.parent / "__pycache__").glob("prelude.*.json")
    monkeypatch.setattr(prelude_cache, "_decoded", {})  # another process: the file is read
    assert prelude_cache.load(prelude, refuse) == first
    cache.unlink()  # this process: decoded once, neither read nor parsed again
    assert prelude_cache.load(prelude, refuse) == first
    assert not cache.exists()


def test_each_load_gets_lists_of_its_own(prelude):
    first = prelude_cache.load(prelude, parse_text)
    first.definitions.clear()
    assert prelude_cache.load(prelude, parse_text).definitions


def test_an_unreadable_or_stale_cache_is_parsed_again(prelude, monkeypatch):
    expected = prelude_cache.load(prelude, parse_text)
    (cache,) = (prelude.parent / "__pycache__").glob("prelude.*.json")
    cache.write_text('{"path": "x", "definitions": [')
    monkeypatch.setattr(prelude_cache, "_decoded", {})
    assert prelude_cache.load(prelude, parse_text) == expected
    # an edited file has another digest: neither the memory nor the old cache answers
    prelude.write_text(prelude.read_text() + "\n# edited\n")
    again = prelude_cache.load(prelude, parse_text)
    assert again == parsed(prelude) and again.definitions == expected.definitions
    assert len(list((prelude.parent / "__pycache__").glob("prelude.*.json"))) == 2


def test_an_unwritable_directory_costs_only_the_parse(prelude):
    (prelude.parent / "__pycache__").write_text("a file where the directory would be")
    assert prelude_cache.load(prelude, parse_text) == parsed(prelude)
