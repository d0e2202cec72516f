"""`resdsl fmt`: the canonical layout, comments and meaning kept, idempotent, and the command."""

from __future__ import annotations

import os
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from resdsl.diagnostics import Report, SpecError
from resdsl.fmt import FormatError, _strip_spans, format_text
from resdsl.frontend import load_spec
from resdsl.parse import parse_text
from tests.helpers import ROOT, SPECS, run_cli

PRELUDE = ROOT / "resdsl" / "prelude.res"
RECIPES = sorted((ROOT / "resdsl" / "recipes").glob("*.res"))
WITH_ERRORS = sorted((ROOT / "tests" / "specs_with_errors").glob("*.res"))


def _parses(path: Path) -> bool:
    return parse_text(path.read_text(encoding="utf-8"), path.name, Report()) is not None


def _ugly(text: str, seed: int) -> str:
    """The same tokens and comments laid out badly: odd spaces and tabs, no space after commas,
    tight operators, comments moved, blank lines doubled, CRLF line endings."""
    rng = random.Random(seed)
    lines = []
    for line in text.split("\n"):
        code, hash_, comment = line.partition("#")
        parts = code.split('"')  # even parts lie outside strings
        for i in range(0, len(parts), 2):
            part = parts[i].replace(", ", ",").replace(" * ", "*")
            part = re.sub(r"(\d) x ", r"\1x ", part)  # `3x 16` is a stage's count and `x`
            part = re.sub(r"^ +", lambda m: rng.choice(["\t", "  ", " " * 7, ""]), part)
            part = re.sub(r"(?<=\S) +(?=\S)", lambda m: rng.choice([" ", "  ", "\t", " \t "]), part)
            parts[i] = part
        code = '"'.join(parts)
        if hash_:
            code = code.rstrip() + rng.choice([" ", "\t", "     "]) if code.strip() else code
        lines.append(code + hash_ + comment + rng.choice(["", " ", "\t"]))
        if not line.strip():
            lines.append(rng.choice(["", "   "]))
    return "\n\n" + "\r\n".join(lines) + "\n\n\n"


# --- the library ----------------------------------------------------------------------------


def test_every_library_spec_is_formatted(capsys):
    code, out, err = run_cli(["fmt", "--check", *SPECS], capsys)
    assert (code, out, err) == (0, "", "")


def test_the_recipes_are_formatted():
    for path in RECIPES:
        text = path.read_text(encoding="utf-8")
        assert format_text(text) == text, path


@pytest.mark.parametrize("path", [*SPECS, PRELUDE, *RECIPES, *WITH_ERRORS], ids=str)
def test_idempotent_and_undoes_an_ugly_layout(path):
    text = (ROOT / path).read_text(encoding="utf-8")
    if not _parses(ROOT / path):
        with pytest.raises(FormatError):
            format_text(text)
        return
    once = format_text(text)
    assert format_text(once) == once
    before = _strip_spans(parse_text(text, "a.res", Report()))
    assert _strip_spans(parse_text(once, "a.res", Report())) == before
    for seed in range(3):
        ugly = _ugly(text, seed)
        assert format_text(ugly) == once, seed


def _load_all(tree: Path, files: list[str]) -> dict:
    loaded = {}
    cwd = Path.cwd()
    os.chdir(tree)
    try:
        for name in files:
            try:
                spec, analysis = load_spec(name)
                loaded[name] = (spec.network, spec.train, analysis.params, analysis.macs)
            except SpecError as error:
                loaded[name] = sorted(d.message for d in error.report.diagnostics)
    finally:
        os.chdir(cwd)
    return loaded


def test_meaning_kept_for_every_spec(tmp_path, capsys):
    """Format ugly copies of the library (and the specs with errors that parse) in a copy of the
    tree; each loads to the same network, training and counts as the original."""
    files = [*SPECS] + [p.relative_to(ROOT).as_posix() for p in WITH_ERRORS if _parses(p)]
    before, after = tmp_path / "before", tmp_path / "after"
    for tree in (before, after):
        shutil.copytree(ROOT / "specs", tree / "specs")
        shutil.copytree(ROOT / "tests" / "specs_with_errors", tree / "tests" / "specs_with_errors")
    for seed, name in enumerate(files):
        path = after / name
        path.write_bytes(_ugly(path.read_text(encoding="utf-8"), seed).encode())
    expected = _load_all(before, files)
    os.chdir(after)
    code, out, err = run_cli(["fmt", *files], capsys)
    assert code == 0, err
    assert out.count("reformatted ") == len(files)
    got = _load_all(after, files)
    assert got == expected
    for name in SPECS:  # the library is formatted: the ugly copies come back byte for byte
        assert (after / name).read_bytes() == (ROOT / name).read_bytes(), name
    assert any(isinstance(v, tuple) for v in got.values())


def test_the_prelude_means_the_same():
    text = PRELUDE.read_text(encoding="utf-8")
    before = parse_text(text, "prelude.res", Report())
    after = parse_text(format_text(_ugly(text, 7)), "prelude.res", Report())
    assert _strip_spans(after) == _strip_spans(before)


# --- the layout ------------------------------------------------------------------------------

UGLY = """\

# a comment   \r
param  n=3   # the count
param w = -n*-(2 + 1)


block se(reduction=16)extends basic {after bn2 {
se:squeeze_excite,reduction reduction
}
}
block mine(planes,stride = 1,
  groups = 1) {
\texpansion = 1
  check stride == 1 or stride == 2,   # a comment after the comma

      "stride 1 or 2"
    conv1 : conv 3x3 planes,stride stride,
    groups groups
      relu
  longer_name: batchnorm   # trailing
  add shortcut
  if stride > 1 {
  avg_pool stride
  } else {
  identity
  }
  down: {
    conv 1x1 planes
  }
}

network net {
  input 3x32x32
  classes 10   # ten
   stem cifar
 block mine
  shortcut A
  stage: n x 16,# first
            stride 1
  stage s2 : 3x 32 , stride 2
  drop_path 0.1
}
train paper_cifar {}
"""

FORMATTED = """\
# a comment
param n = 3                             # the count
param w = -n * -(2 + 1)

block se(reduction = 16) extends basic {
    after bn2 {
        se: squeeze_excite, reduction reduction
    }
}
block mine(planes, stride = 1,
           groups = 1) {
    expansion = 1
    check stride == 1 or stride == 2,   # a comment after the comma
          "stride 1 or 2"
    conv1:       conv 3x3 planes, stride stride,
                 groups groups
                 relu
    longer_name: batchnorm              # trailing
                 add shortcut
    if stride > 1 {
                 avg_pool stride
    } else {
                 identity
    }
    down: {
        conv 1x1 planes
    }
}

network net {
    input     3x32x32
    classes   10                        # ten
    stem      cifar
    block     mine
    shortcut  A
    stage: n x 16,                      # first
           stride 1
    stage s2: 3 x 32, stride 2
    drop_path 0.1
}
train paper_cifar {
}
"""


def test_the_canonical_layout():
    assert format_text(UGLY) == FORMATTED
    assert format_text(FORMATTED) == FORMATTED


def test_a_long_line_pushes_the_comments_of_its_body_right():
    text = (
        'network n extends "a.res" {\n'
        "    block bottleneck, stride_at 3x3, groups 32, width_per_group 4  # long\n"
        "    init kaiming_normal fan_out # short\n"
        "}\n"
    )
    assert format_text(text) == (
        'network n extends "a.res" {\n'
        "    block bottleneck, stride_at 3x3, groups 32, width_per_group 4  # long\n"
        "    init  kaiming_normal fan_out                                   # short\n"
        "}\n"
    )


def test_strings_and_comments_are_kept_exactly():
    text = 'train {\n    data cifar10   "a  b,c"   #  odd  ,spacing\t kept\n}\n'
    code = '    data cifar10 "a  b,c"'.ljust(40)
    assert format_text(text) == f"train {{\n{code}#  odd  ,spacing\t kept\n}}\n"


def test_syntax_errors_are_refused():
    with pytest.raises(FormatError) as error:
        format_text("network n {\n    stage: 3x16\n}\n", "bad.res")
    assert "bad.res:2:" in str(error.value)


# --- the command -----------------------------------------------------------------------------


def _write(path: Path, text: str) -> Path:
    path.write_bytes(text.encode())
    return path


def test_check_lists_what_would_change_and_changes_nothing(tmp_path, capsys):
    os.chdir(tmp_path)
    ugly = _write(tmp_path / "ugly.res", UGLY)
    good = _write(tmp_path / "good.res", FORMATTED)
    code, out, err = run_cli(["fmt", "--check", "ugly.res", "good.res"], capsys)
    assert (code, out, err) == (1, "ugly.res\n", "")
    assert ugly.read_bytes() == UGLY.encode()
    code, out, _ = run_cli(["fmt", "--check", "good.res"], capsys)
    assert (code, out) == (0, "")
    assert good.exists()


def test_fmt_rewrites_changed_files_only(tmp_path, capsys):
    os.chdir(tmp_path)
    ugly = _write(tmp_path / "ugly.res", UGLY)
    good = _write(tmp_path / "good.res", FORMATTED)
    os.utime(good, (1_000_000_000, 1_000_000_000))
    ugly.chmod(0o640)
    code, out, err = run_cli(["fmt", "ugly.res", "good.res"], capsys)
    assert (code, out, err) == (0, "reformatted ugly.res\n", "")
    assert ugly.read_text(encoding="utf-8") == FORMATTED
    assert ugly.stat().st_mode & 0o777 == 0o640
    assert good.stat().st_mtime == 1_000_000_000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.res", "ugly.res"]
    code, out, _ = run_cli(["fmt", "ugly.res"], capsys)
    assert (code, out) == (0, "")


def test_crlf_and_a_byte_order_mark_are_layout(tmp_path, capsys):
    os.chdir(tmp_path)
    path = tmp_path / "a.res"
    path.write_bytes(b"\xef\xbb\xbf" + FORMATTED.replace("\n", "\r\n").encode())
    code, out, _ = run_cli(["fmt", "--check", "a.res"], capsys)
    assert (code, out) == (1, "a.res\n")
    run_cli(["fmt", "a.res"], capsys)
    assert path.read_bytes() == FORMATTED.encode()


@pytest.mark.parametrize("check", [False, True])
def test_errors_are_located_and_leave_files_alone(tmp_path, capsys, check):
    os.chdir(tmp_path)
    broken = _write(tmp_path / "broken.res", "network n {\n    stage: 3x16\n}\n")
    (tmp_path / "latin1.res").write_bytes(b"# caf\xe9\nnetwork n\n")
    ugly = _write(tmp_path / "ugly.res", UGLY)
    args = ["fmt", *(["--check"] if check else []), "broken.res", "latin1.res", "nope.res",
            "ugly.res"]  # fmt: skip
    code, out, err = run_cli(args, capsys)
    assert code == 1
    assert out == ("ugly.res\n" if check else "reformatted ugly.res\n")
    assert "broken.res:2:" in err and "error" in err
    assert "latin1.res:1:6: error: latin1.res is not UTF-8 text" in err
    assert "no such file: nope.res" in err
    assert err.endswith("3 errors\n") and "Traceback" not in err
    assert broken.read_text(encoding="utf-8") == "network n {\n    stage: 3x16\n}\n"
    assert (ugly.read_bytes() == UGLY.encode()) is check


def test_help_has_an_example(capsys):
    code, out, _ = run_cli(["fmt", "--help"], capsys)
    assert code == 0
    assert "--check" in out and "resdsl fmt --check specs/*.res" in out


def test_fmt_imports_neither_torch_nor_jax():
    code = (
        "import sys\n"
        "from resdsl.cli import app\n"
        "from resdsl.fmt import format_text\n"
        "format_text(open('specs/resnet50.res').read())\n"
        "bad = [m for m in ('torch', 'jax', 'matplotlib') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_new_writes_formatted_specs(tmp_path, capsys):
    shutil.copytree(ROOT / "specs", tmp_path / "specs")
    os.chdir(tmp_path)
    bases = ["specs/cifar/resnet20.res", "specs/resnet50.res", "specs/variants/resnet50_d.res"]
    for i, base in enumerate(bases):
        assert run_cli(["new", f"specs/new{i}.res", "--from", base], capsys)[0] == 0
    code, out, _ = run_cli(["fmt", "--check", *(f"specs/new{i}.res" for i in range(3))], capsys)
    assert (code, out) == (0, "")


def test_calls_and_the_dataflow_statements_keep_their_layout():
    """A function's parentheses stay on its name (`max(a, b)`, not `max (a, b)`), a head
    definition's header reads as a block's, and `each`, `keep`, `add NAME` lay out as layers."""
    text = """head h(features, act = relu) {
    c: conv 1x1 max(features, 8)
}

block b(planes, stride = 1) {
    k = floor(log2(planes) + 0.5)
    first = stride > 1 or inplanes != planes
    c1: conv 3x3 planes, stride stride
        split 2
    each i {
        if i > 0 {
            add previous
        }
        p: conv 3x3 planes // 2, dilation i + 1
    }
        keep v
        concat
        multiply v
        add shortcut
}
"""
    assert format_text(text) == text
    assert format_text(text.replace("max(features", "max (features")) == text
