"""Hostile input: nothing in a spec, a path or an output directory runs as code, `extends` reads
only specs of the spec's own tree, and every bad input ends in a located error in bounded time.
Each case of the hostile-input issue is a test here, and a seeded fuzzer runs a few hundred
mutated specs."""

from __future__ import annotations

import ast
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from resdsl.frontend import check
from tests.fuzzing import inputs, prepare, run_one
from tests.helpers import ROOT, run_cli

# the network of specs/cifar/resnet20.res, without its train section
RESNET20 = (ROOT / "specs/cifar/resnet20.res").read_text().split("\ntrain ")[0] + "\n"
INJECTION = 'x"+str(__import__("os").system("touch PWNED"))+"y'


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(text)
    return path


def rendered(path: Path, sets=()) -> str:
    from resdsl.frontend import check as check_file

    report = check_file(path, list(sets))
    text = report.render()
    assert report.diagnostics, "expected an error"
    assert all(d.span is not None for d in report.diagnostics), text
    return text


# --- code that must not run ---------------------------------------------------------------------


def test_a_quote_in_the_spec_and_output_names_stays_text(tmp_path, capsys, monkeypatch):
    directory = tmp_path / f'dir"{INJECTION}'
    directory.mkdir()
    spec = write(directory, f"{INJECTION}.res", RESNET20 + "train paper_cifar\n")
    out = tmp_path / "pkg\nimport os; os.system('touch PWNED')\n#"
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(["compile", str(spec), "-o", str(out)], capsys)
    assert code == 0, err
    for name in ("model.py", "train.py", "data.py", "__init__.py", "export.py"):
        source = (out / name).read_text()
        compile(source, name, "exec")  # still Python
        assert "\nimport os; os.system" not in source
    result = subprocess.run(
        [sys.executable, "-c", "import model", ],
        cwd=out, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    result = subprocess.run(
        [sys.executable, "train.py", "--help"], cwd=out, capture_output=True, text=True,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    result = subprocess.run(
        [sys.executable, "export.py", "--help"], cwd=out, capture_output=True, text=True,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert not list(tmp_path.rglob("PWNED")) and not (out / "PWNED").exists()
    # the JAX package: every file is still Python and holds no injected line
    jax_out = tmp_path / f"jax\n#{INJECTION}"
    code, _, err = run_cli(["compile", str(spec), "--backend", "jax", "-o", str(jax_out)], capsys)
    assert code == 0, err
    for path in jax_out.glob("*.py"):
        tree = ast.parse(path.read_text())  # still Python, and the name is only ever text:
        names = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
        assert "__import__" not in names, path.name


@pytest.mark.parametrize(
    "target",
    ["/etc/passwd", "/proc/self/environ", "/dev/zero", "/dev/stdin", "../../outside.res",
     "/etc/hostname.res"],
)  # fmt: skip
def test_extends_reads_only_specs_of_the_tree_and_never_prints_them(tmp_path, target):
    os.environ["RESDSL_SECRET_MARKER"] = "s3cr3t-value"
    inner = tmp_path / "a" / "b"
    inner.mkdir(parents=True)
    (tmp_path / "outside.res").write_text("secret line that must not be shown\n")
    spec = write(inner, "x.res", f'network x extends "{target}" {{\n}}\n')
    text = rendered(spec)
    assert "extends" in text
    assert "s3cr3t" not in text and "root:" not in text and "secret line" not in text


def test_extends_of_a_fifo_or_a_huge_file_does_not_block_or_read(tmp_path):
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "fifo.res")
        assert "not a regular file" in rendered(
            write(tmp_path, "f.res", 'network x extends "fifo.res" {\n}\n')
        )
    (tmp_path / "big.res").write_bytes(b"#" * (2 << 20))
    assert "a spec has at most" in rendered(
        write(tmp_path, "b.res", 'network x extends "big.res" {\n}\n')
    )


# --- numbers, depth, time -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("replace", "by", "message"),
    [
        ("classes  10", "classes  " + "9" * 5000, "is too long"),
        ("classes  10", "classes  -a*a", "too large"),
        ("stem     cifar", "stem     cifar\n    batchnorm eps 1e400", "too large"),
        ("stem     cifar", "stem     cifar\n    batchnorm eps 1e400-1e400", "too large"),
        ("classes  10", "classes  10**4", "unexpected"),
        ("classes  10", "classes  " + " + ".join(["1"] * 500), "operators"),
        ("classes  10", "classes  " + "-" * 500 + "1", "operators"),
        ("stage: n x 16", "stage: n x 16" + ", stride 1" * 10_000, "is given twice"),
    ],
)  # fmt: skip
def test_hostile_numbers_and_expressions_are_located_errors(tmp_path, replace, by, message):
    text = "param a = 999999999999999\n" + RESNET20.replace(replace, by, 1)
    assert message in rendered(write(tmp_path, "n.res", text))


def test_deeply_nested_definitions_are_refused(tmp_path):
    body = "    if true_ == 1 {\n" * 400 + "    }\n" * 400
    text = f"block deep(planes, stride = 1) {{\n{body}}}\n" + RESNET20
    assert "blocks nest 33 deep" in rendered(write(tmp_path, "deep.res", text))


def test_exponential_parameters_stop_at_the_bound(tmp_path):
    lines = ["param q0 = 2"] + [f"param q{i} = q{i - 1} * q{i - 1}" for i in range(1, 27)]
    text = "\n".join(lines) + "\n" + RESNET20.replace("classes  10", "classes  q26")
    assert "too large" in rendered(write(tmp_path, "q.res", text))


def test_thousands_of_broken_lines_print_one_page(tmp_path, capsys):
    path = write(tmp_path, "c.res", RESNET20 + ",\n" * 10_000)
    code, _, err = run_cli(["check", str(path)], capsys)
    assert code == 1
    assert err.count(": error: ") == 50
    assert "more errors in" in err


@pytest.mark.parametrize(
    ("train", "sets", "message"),
    [
        ("train paper_cifar {\n    optimizer sgd, lr 1e400\n}\n", (), "too large"),
        ("train paper_cifar {\n    batch 1e300\n}\n", (), "too large"),
        ("train paper_cifar {\n    batch 100000000\n}\n", (), "at most"),
    ],
)
def test_training_numbers_are_bounded(tmp_path, train, sets, message):
    assert message in rendered(write(tmp_path, "t.res", RESNET20 + train), sets)


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e400", "9" * 5000])
def test_set_refuses_values_that_are_not_finite(tmp_path, capsys, value):
    text = "param lr = 0.1\n" + RESNET20 + "train paper_cifar {\n    optimizer sgd, lr lr\n}\n"
    path = write(tmp_path, "s.res", text)
    code, _, err = run_cli(["check", str(path)], capsys)
    assert code == 0, err
    code, _, err = run_cli(["summary", str(path), "--set", f"lr={value}"], capsys)
    assert code == 1 and "internal error" not in err and "--set lr=" in err


def test_a_file_that_is_not_utf8_is_located(tmp_path):
    path = tmp_path / "u.res"
    path.write_bytes(RESNET20.encode().replace(b"classes", b"cl\xffasses"))
    text = rendered(path)
    line = RESNET20.split("\n").index("    classes  10") + 1
    assert f"u.res:{line}:7: error: " in text and "not UTF-8" in text


def test_a_byte_order_mark_is_allowed(tmp_path):
    path = tmp_path / "bom.res"
    path.write_bytes(b"\xef\xbb\xbf" + RESNET20.encode())
    assert not check(path).diagnostics


def test_a_file_without_a_network_is_reported_once_with_its_place(tmp_path, capsys):
    path = write(tmp_path, "p.res", "param n = 3\n")
    code, _, err = run_cli(["check", str(path)], capsys)
    assert code == 1 and err.count("declares no network") == 1 and f"{path}:1:1:" in err


# --- -o edge cases ---------------------------------------------------------------------------


def compile_to(capsys, out) -> tuple[int, str]:
    code, _, err = run_cli(["compile", "specs/cifar/resnet20.res", "-o", str(out)], capsys)
    assert "internal error" not in err
    return code, err


def test_output_under_a_file_is_refused(tmp_path, capsys):
    (tmp_path / "file").write_text("keep me")
    code, err = compile_to(capsys, tmp_path / "file" / "pkg")
    assert code == 1 and "is a file" in err
    assert (tmp_path / "file").read_text() == "keep me"


def test_output_a_dangling_link_is_refused_and_kept(tmp_path, capsys):
    link = tmp_path / "dangling"
    link.symlink_to(tmp_path / "nowhere")
    code, err = compile_to(capsys, link)
    assert code == 1 and "symbolic link to nothing" in err and link.is_symlink()


def test_output_the_working_directory_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(
        ["compile", str(ROOT / "specs/cifar/resnet20.res"), "-o", ".", "--force"], capsys
    )
    assert code == 1 and "working directory" in err


def test_output_a_link_to_a_package_keeps_the_link(tmp_path, capsys):
    real = tmp_path / "real"
    link = tmp_path / "link"
    assert compile_to(capsys, real)[0] == 0
    link.symlink_to(real, target_is_directory=True)
    assert compile_to(capsys, link)[0] == 0
    assert link.is_symlink() and (real / "model.py").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "real"]  # nothing stray


def test_output_keeps_the_mode_of_the_directory_it_replaces(tmp_path, capsys):
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    assert compile_to(capsys, private)[0] == 0
    assert stat.S_IMODE(private.stat().st_mode) == 0o700


# --- the fuzzer ----------------------------------------------------------------------------------


@pytest.mark.long
def test_fuzzed_specs_end_in_located_errors(tmp_path):
    """300 mutations of the library's specs (bench/fuzz.py runs 10,000)."""
    prepare(tmp_path)
    failures = []
    for name, data in inputs(seed=2026, count=300):
        path = tmp_path / name
        path.write_bytes(data)
        outcome = run_one(path)
        if outcome.kind == "internal" or outcome.unlocated:
            failures.append((name, outcome.detail))
        path.unlink()
    assert not failures, failures[:5]
