"""The parsed prelude and recipes (the .res files shipped in the package), kept beside their
bytecode in `__pycache__/`: parsing them is most of the front end's work for a small spec, and
they change only with resdsl itself. A process decodes each file once.

The cache is JSON (never code): syntax nodes by class name, each checked against the classes of
`syntax.py` on the way in. A missing, stale (another hash of the prelude) or unreadable cache is
rebuilt by parsing; an unwritable directory only costs the parse.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

from . import syntax as s
from .diagnostics import Report, Span, remember_source

NODES = {
    cls.__name__: cls
    for cls in (
        s.Num, s.Ref, s.BinOp, s.Neg, s.Not, s.Choose, s.Call, s.Word, s.Str, s.Dims, s.Range, s.Option,
        s.Several, s.Step, s.Statement, s.ParamDecl, s.NetworkDecl, s.TrainDecl, s.Layer, s.Group, s.Let,
        s.If, s.Add, s.Each, s.Branch, s.Insert, s.Remove, s.Check, s.DefParam, s.Definition, Span,
    )
}  # fmt: skip
# the nodes' names and fields: a cache written by another version of syntax.py is not read
SCHEMA = repr(sorted((name, cls._fields) for name, cls in NODES.items()))


def _encode(value):
    if isinstance(value, tuple) and type(value).__name__ in NODES:
        return {"n": type(value).__name__, "f": [_encode(v) for v in value]}
    if isinstance(value, tuple | list):
        return [_encode(v) for v in value]
    return value


def _decode(value):
    if isinstance(value, dict):
        return NODES[value["n"]](*(_decode(v) for v in value["f"]))
    if isinstance(value, list):
        return tuple(_decode(v) for v in value)
    return value


PARTS = ("params", "networks", "trains", "definitions")
# (path, digest) -> the file's parts, decoded once a process: the syntax nodes are immutable
_decoded: dict[tuple[str, str], tuple[tuple, ...]] = {}


def _spec_file(shown: str, parts: tuple[tuple, ...]) -> s.SpecFile:
    return s.SpecFile(shown, **{name: list(part) for name, part in zip(PARTS, parts, strict=True)})


def load(path: Path, parse) -> s.SpecFile | None:
    """A package file's syntax: from the cache when it matches the text, else parsed (and
    cached). Its spans name the file by its absolute path."""
    shown = str(path)
    text = path.read_text(encoding="utf-8")
    remember_source(shown, text)
    digest = hashlib.sha256((SCHEMA + text).encode()).hexdigest()[:20]
    if (shown, digest) in _decoded:
        return _spec_file(shown, _decoded[shown, digest])
    cache = path.parent / "__pycache__" / f"{path.stem}.{digest}.json"
    try:
        data = json.loads(cache.read_text(encoding="utf-8"))
        if data["path"] == shown:
            _decoded[shown, digest] = tuple(_decode(data[part]) for part in PARTS)
            return _spec_file(shown, _decoded[shown, digest])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    report = Report()
    spec = parse(text, shown, report)
    if spec is None or report.diagnostics:  # pragma: no cover - the prelude is tested
        return spec
    encoded = {part: _encode(getattr(spec, part)) for part in PARTS}
    # as the cached file gives it back (tuples all through) to the process's later calls
    _decoded[shown, digest] = tuple(_decode(encoded[part]) for part in PARTS)
    payload = json.dumps({"path": shown, **encoded})
    try:
        cache.parent.mkdir(exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=cache.parent, suffix=".tmp")
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(payload)
        os.replace(temporary, cache)
    except OSError:
        pass
    return spec
