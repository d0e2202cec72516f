"""The commands around the compiler: plot, runs, list, new; compile's default directory and its
refusal to replace another spec's package; bench/degradation.py's command line and table."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from resdsl.frontend import load_spec
from tests.helpers import ROOT, SPECS, run_cli

# The README's figure: a real run of bench/degradation.py, its metrics kept in the repository.
FIGURE_RUNS = sorted((ROOT / "docs" / "figures" / "fig6-fashion-mnist").glob("*/final.json"))


def write_run(run: Path, *, spec: str, iterations: int = 400, finished: bool = True,
              error_at_end: float = 0.1, cut_short: bool = False) -> Path:  # fmt: skip
    """A run directory as the generated trainers write it: log lines every 20 iterations with
    learning-rate drops at 1/2 and 3/4 of the run, test evaluations every 100 iterations, and
    final.json when `finished`."""
    run.mkdir(parents=True)
    lines = []
    for done in range(20, iterations + 1, 20):
        lr = 0.1 if done <= iterations // 2 else 0.01 if done <= 3 * iterations // 4 else 0.001
        error = error_at_end + 0.8 * (1 - done / iterations) ** 2
        lines.append({"iteration": done, "lr": lr, "train_loss": 2 * error,
                      "train_error": error, "images_per_s": 1000.0})  # fmt: skip
        if done % 100 == 0 and (finished or done < iterations):
            lines.append({"iteration": done, "split": "test", "protocol": "single_view",
                          "top1_error": error + 0.02, "top5_error": error / 10})  # fmt: skip
    text = "".join(json.dumps(line) + "\n" for line in lines)
    if cut_short:  # a stop in the middle of writing the last line
        text += '{"iteration": 42'
    (run / "metrics.jsonl").write_text(text)
    if finished:
        final = {"spec": spec, "recipe": "paper_cifar", "backend": "torch",
                 "iterations": iterations, "test_top1_error": error_at_end + 0.02,
                 "test_top5_error": 0.004, "wall_s": 125.0, "train_s": 120.0,
                 "images_per_s": 1066.7, "results": {}}  # fmt: skip
        (run / "final.json").write_text(json.dumps(final, indent=2) + "\n")
    return run


@pytest.fixture
def two_runs(tmp_path) -> list[Path]:
    return [
        write_run(tmp_path / "p20", spec="specs/fashion-mnist/plain20.res", error_at_end=0.12),
        write_run(tmp_path / "r20", spec="specs/fashion-mnist/resnet20.res", error_at_end=0.08),
    ]


# --- plot ------------------------------------------------------------------------------------


def test_plot_png(two_runs, tmp_path, capsys):
    out = tmp_path / "fig.png"
    code, stdout, err = run_cli(["plot", *map(str, two_runs), "-o", str(out)], capsys)
    assert code == 0, err
    assert stdout == f"wrote {out.as_posix()} (2 runs)\n"
    data = out.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and 15_000 < len(data) < 150_000


def test_plot_svg_names_each_run_and_the_line_styles(two_runs, tmp_path, capsys):
    out = tmp_path / "fig.svg"
    code, _, err = run_cli(["plot", *map(str, two_runs), "-o", str(out), "--title", "t"], capsys)
    assert code == 0, err
    text = out.read_text()
    assert text.startswith("<?xml") and "<svg" in text and len(text) > 15_000
    for label in ("plain20", "resnet20", "training error", "test error", "learning rate drop"):
        assert label in text


def test_plot_draws_a_run_that_is_still_going(tmp_path, capsys):
    run = write_run(tmp_path / "going", spec="x", finished=False, cut_short=True)
    code, stdout, err = run_cli(["plot", str(run), "-o", str(tmp_path / "f.png")], capsys)
    assert code == 0 and err == "" and "(1 run)" in stdout


def test_plot_refuses_what_it_cannot_draw(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run_cli(["plot", str(empty), "-o", str(tmp_path / "f.png")], capsys)
    assert code == 1 and "none of the runs has a log line" in err and "Traceback" not in err
    write_run(tmp_path / "r", spec="x")
    code, _, err = run_cli(["plot", str(tmp_path / "r"), "-o", str(tmp_path / "f.pdf")], capsys)
    assert code == 1 and "must end in .png or .svg" in err
    assert not (tmp_path / "f.png").exists() and not (tmp_path / "f.pdf").exists()


def test_lr_drops_and_test_curve(tmp_path):
    from resdsl.runs import read_run

    run = read_run(write_run(tmp_path / "r", spec="s.res", iterations=400))
    assert run.lr_drops() == [200, 300]
    assert [i for i, _ in run.test_curve()] == [100, 200, 300, 400]
    assert run.name == "s"


@pytest.mark.skipif(not FIGURE_RUNS, reason="the README figure's runs are not in this checkout")
def test_plot_and_runs_on_the_readme_figures_real_runs(tmp_path, capsys):
    runs = [str(p.parent.relative_to(ROOT)) for p in FIGURE_RUNS]
    code, _, err = run_cli(["plot", *runs, "-o", str(tmp_path / "fig6.png")], capsys)
    assert code == 0, err
    assert (tmp_path / "fig6.png").read_bytes().startswith(b"\x89PNG")
    code, out, _ = run_cli(["runs", *runs], capsys)
    assert code == 0 and out.count("finished") == len(runs)
    readme = (ROOT / "README.md").read_text()
    assert "docs/figures/fig6-fashion-mnist.png" in readme
    png = ROOT / "docs" / "figures" / "fig6-fashion-mnist.png"
    assert png.read_bytes().startswith(b"\x89PNG") and 20_000 < png.stat().st_size < 150_000


# --- runs ------------------------------------------------------------------------------------


def test_runs_table_of_finished_going_and_missing_runs(two_runs, tmp_path, capsys):
    going = write_run(tmp_path / "going", spec="x", finished=False, cut_short=True)
    code, out, err = run_cli(["runs", *map(str, two_runs), str(going), str(tmp_path / "nope")],
                             capsys)  # fmt: skip
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["run", "spec", "recipe", "backend", "iterations", "train", "err",
                                "test", "top-1", "test", "top-5", "img/s", "wall", "time",
                                "status"]  # fmt: skip
    p20 = lines[2].split()
    assert p20[1:10] == ["specs/fashion-mnist/plain20.res", "paper_cifar", "torch", "400",
                         "12.10%", "14.00%", "0.40%", "1,067", "2m05s"]  # fmt: skip
    assert p20[10] == "finished"
    assert "no final.json: running or stopped at iteration 400" in lines[4]
    assert "no such directory" in lines[5]
    assert "Traceback" not in out + err


def test_runs_json(two_runs, capsys):
    code, out, _ = run_cli(["runs", *map(str, two_runs), "--json"], capsys)
    assert code == 0
    rows = json.loads(out)
    assert [r["name"] for r in rows] == ["plain20", "resnet20"]
    assert rows[1]["test_top1_error"] == pytest.approx(0.10)
    assert rows[1]["final_train_error"] == pytest.approx(0.08, abs=0.01)
    assert rows[1]["iterations"] == 400 and rows[1]["wall_s"] == 125.0
    assert (rows[1]["recipe"], rows[1]["backend"]) == ("paper_cifar", "torch")


# --- list and new ----------------------------------------------------------------------------


def test_list_the_library(capsys):
    code, out, _ = run_cli(["list"], capsys)
    assert code == 0
    rows = {line.split()[0]: line.split() for line in out.splitlines()[2:] if line.strip()}
    assert rows["resnet34.res"][1:6] == ["resnet34", "34", "3x224x224", "imagefolder",
                                         "21,797,672"]  # fmt: skip
    assert rows["fashion-mnist/resnet20.res"][1:6] == ["resnet20", "20", "1x32x32",
                                                       "fashion_mnist", "269,434"]  # fmt: skip
    assert all(spec.removeprefix("specs/") in rows for spec in SPECS)
    # the library and whatever a user has added to specs/ (the README's tutorial writes there)
    listed = [name for name in rows if name.endswith(".res")]
    assert out.rstrip().endswith(f"{len(listed)} specs in specs")


def test_list_counts_the_errors_of_broken_specs(tmp_path, capsys):
    shutil.copy(ROOT / "specs/cifar/resnet20.res", tmp_path / "good.res")
    shutil.copy(ROOT / "tests/specs_with_errors/unknown_stem.res", tmp_path / "bad.res")
    code, out, err = run_cli(["list", str(tmp_path)], capsys)
    assert code == 0 and err == ""
    assert "good.res  resnet20" in out
    assert "bad.res   1 error (resdsl check" in out
    assert out.rstrip().endswith("2 specs in " + tmp_path.as_posix() + ", 1 with errors")


@pytest.fixture
def library_copy(tmp_path, monkeypatch) -> Path:
    """The spec library in a fresh directory, as the working directory."""
    shutil.copytree(ROOT / "specs", tmp_path / "specs")
    monkeypatch.chdir(tmp_path)
    return tmp_path


# `extends` reaches specs of the working directory's tree: new specs are written inside it.


def test_new_extends_the_spec_and_never_overwrites(library_copy, capsys):
    tmp_path = library_copy
    file = tmp_path / "mine.res"
    code, out, err = run_cli(["new", str(file), "--from", "specs/cifar/resnet20.res"], capsys)
    assert code == 0, err
    assert "mine extends specs/cifar/resnet20.res (20 layers, 269,722 parameters)" in out
    text = file.read_text()
    assert "# param n = 3" in text and "    # shortcut A" in text
    assert "#     schedule   lr * 0.1 at 32000, 48000" in text  # the recipe, shown in full
    # an override: ResNet-56 from its parameter
    file.write_text(text.replace("# param n = 3", "param n = 9"))
    assert load_spec(file)[1].params == 853_018
    # never over an existing file
    code, _, err = run_cli(["new", str(file), "--from", "specs/resnet34.res"], capsys)
    assert code == 1 and "exists; not overwriting it" in err
    assert "param n = 9" in file.read_text()


def test_new_named_stages_are_overrides(library_copy, capsys):
    tmp_path = library_copy
    file = tmp_path / "r34.res"
    assert run_cli(["new", str(file), "--from", "specs/resnet34.res"], capsys)[0] == 0
    text = file.read_text()
    assert "    # stage conv4_x: 6 x 256, stride 2    # 14x14" in text
    file.write_text(text.replace("# stage conv4_x: 6 x 256", "stage conv4_x: 23 x 256"))
    spec, analysis = load_spec(file)
    assert analysis.depth == 34 + 2 * 17 and spec.network.stages[2].blocks == 23


@pytest.mark.parametrize("base", SPECS)
def test_new_from_every_library_spec_is_the_same_network(base, library_copy, capsys):
    tmp_path = library_copy
    file = tmp_path / "variant.res"
    code, _, err = run_cli(["new", str(file), "--from", base], capsys)
    assert code == 0, err
    spec, analysis = load_spec(file)
    base_spec, base_analysis = load_spec(base)
    assert (analysis.params, analysis.macs, analysis.depth) == (
        base_analysis.params, base_analysis.macs, base_analysis.depth)  # fmt: skip
    assert spec.train == base_spec.train


# --- compile: default directory, no quiet clobbering ----------------------------------------


def test_default_directory_comes_from_the_specs_path(library_copy, capsys):
    code, out, _ = run_cli(["compile", "specs/fashion-mnist/resnet20.res"], capsys)
    assert code == 0
    assert out.splitlines() == [
        "wrote generated/fashion_mnist_resnet20_torch/: README.md, __init__.py, data.py, "
        "export.py, model.py, predict.py, runtime.py, train.py",
        "train it:  python generated/fashion_mnist_resnet20_torch/train.py "
        "--out runs/fashion_mnist_resnet20_torch",
    ]
    assert run_cli(["compile", "specs/cifar/resnet20.res"], capsys)[0] == 0
    assert run_cli(["compile", "specs/cifar/resnet20.res", "--set", "n=9"], capsys)[0] == 0
    assert run_cli(["compile", "specs/resnet34.res", "--backend", "jax"], capsys)[0] == 0
    assert sorted(p.name for p in (library_copy / "generated").iterdir()) == [
        "cifar_resnet20_n9_torch", "cifar_resnet20_torch", "fashion_mnist_resnet20_torch",
        "resnet34_jax"]  # fmt: skip
    header = (library_copy / "generated/cifar_resnet20_n9_torch/model.py").read_text()
    assert "resdsl compile specs/cifar/resnet20.res --backend torch --set n=9\n" in header


def test_a_package_of_another_spec_is_not_replaced_without_force(library_copy, capsys):
    out = "generated/fashion_mnist_resnet20_torch"
    assert run_cli(["compile", "specs/fashion-mnist/resnet20.res"], capsys)[0] == 0
    before = (library_copy / out / "model.py").read_text()
    code, _, err = run_cli(["compile", "specs/cifar/resnet56.res", "-o", out], capsys)
    assert code == 1
    assert f"{out} holds a package of specs/fashion-mnist/resnet20.res; not replacing it" in err
    assert "--force" in err
    code, _, err = run_cli(["compile", "specs/fashion-mnist/resnet20.res", "-o", out,
                            "--backend", "jax"], capsys)  # fmt: skip
    assert code == 1 and "holds the torch package of specs/fashion-mnist/resnet20.res" in err
    code, _, err = run_cli(["compile", "specs/fashion-mnist/resnet20.res", "--set", "n=5",
                            "-o", out], capsys)  # fmt: skip
    assert code == 1 and "not replacing it with specs/fashion-mnist/resnet20.res" in err
    assert (library_copy / out / "model.py").read_text() == before
    # the same spec again: regenerated; another with --force: replaced
    assert run_cli(["compile", "./specs/fashion-mnist/resnet20.res"], capsys)[0] == 0
    assert run_cli(["compile", "specs/cifar/resnet56.res", "-o", out, "--force"], capsys)[0] == 0
    assert "from specs/cifar/resnet56.res." in (library_copy / out / "model.py").read_text()


def test_a_spec_without_train_section_is_not_told_to_train(tmp_path, capsys):
    spec = tmp_path / "net.res"
    text = (ROOT / "specs/resnet18.res").read_text()
    spec.write_text(text.replace("train paper_imagenet", ""))
    code, out, _ = run_cli(["compile", str(spec), "-o", str(tmp_path / "pkg")], capsys)
    assert code == 0 and out.startswith("wrote ") and "train it" not in out


@pytest.mark.parametrize(
    "args",
    [
        ["check", "specs/resnet152.res"],
        ["summary", "specs/cifar/resnet20.res", "--json"],
        ["list", "specs/cifar"],
        ["compile", "specs/cifar/resnet20.res", "-o", "{tmp}/pkg"],
        ["new", "{tmp}/x.res", "--from", "specs/cifar/resnet20.res"],
    ],
)
def test_the_compile_path_imports_neither_torch_jax_nor_matplotlib(args, tmp_path):
    shutil.copytree(ROOT / "specs", tmp_path / "specs")
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    code = (
        "import sys\n"
        "from resdsl.cli import main\n"
        f"sys.argv = ['resdsl', *{args!r}]\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        "heavy = sorted(m for m in sys.modules\n"
        "               if m.split('.')[0] in ('torch', 'jax', 'flax', 'matplotlib'))\n"
        "print('HEAVY', heavy, file=sys.stderr)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert "HEAVY []" in result.stderr


# --- bench/degradation.py --------------------------------------------------------------------


def load_bench():
    spec = importlib.util.spec_from_file_location("degradation", ROOT / "bench/degradation.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_help_is_whole():
    result = subprocess.run([sys.executable, "bench/degradation.py", "--help"], cwd=ROOT,
                            capture_output=True, text=True, check=True)  # fmt: skip
    for flag in ("--iterations", "--batch-size", "--seed", "--test-every", "--out", "--nets"):
        assert flag in result.stdout
    assert "the README's figure" in result.stdout
    assert "fig6.png (the error curves, drawn by the code\nof `resdsl plot`)" in result.stdout


def test_bench_table_says_iterations_test_images_and_what_it_shows(tmp_path):
    from resdsl.runs import read_run

    bench = load_bench()
    runs = {}
    for name, error in [("plain20", 0.10), ("plain56", 0.20), ("resnet20", 0.09),
                        ("resnet56", 0.07)]:  # fmt: skip
        runs[name] = read_run(write_run(tmp_path / name, spec=f"specs/fashion-mnist/{name}.res",
                                        error_at_end=error))  # fmt: skip
    args = bench.parse_args(["--eval-images", "2000", "--seed", "3"])
    text = bench.report(args, runs)
    assert text.startswith("Fashion-MNIST, 400 iterations of batch 128 (learning rate divided by "
                           "10 after iteration 200 and 300), seed 3")  # fmt: skip
    assert "the first 2,000 of the 10,000 test images" in text
    args = bench.parse_args([])
    assert "test accuracy on all 10,000 test images" in bench.report(args, runs)
    assert "| plain-56 | 78.00% | 20." in text
    assert "The deeper plain net trains worse" in text
    assert "The deeper residual net trains better" in text


def test_bench_starts_a_new_directory_each_time(tmp_path):
    bench = load_bench()
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "results.md").write_text("earlier")
    with pytest.raises(SystemExit, match="not empty"):
        bench.main(["--out", str(tmp_path / "old")])
    assert (tmp_path / "old" / "results.md").read_text() == "earlier"


@pytest.mark.parametrize("command", ["plot", "runs", "list", "new", "compile"])
def test_each_command_has_help_with_an_example(command, capsys):
    code, out, _ = run_cli([command, "--help"], capsys)
    assert code == 0 and "Example" in out and f"resdsl {command} " in out
    code, out, _ = run_cli(["--help"], capsys)
    assert f"\n  {command} " in out


def test_each_package_has_a_run_directory_of_its_own(library_copy, capsys):
    """compile prints the run directory train.py takes by default, another for each backend."""
    printed = {}
    for backend in ("torch", "jax"):
        code, out, _ = run_cli(["compile", "specs/cifar/resnet20.res", "--backend", backend],
                               capsys)  # fmt: skip
        assert code == 0
        printed[backend] = out.split("--out ")[1].strip()
        train = library_copy / "generated" / f"cifar_resnet20_{backend}" / "train.py"
        assert f'out="{printed[backend]}",' in train.read_text()  # train.py --help's default
    assert printed == {"torch": "runs/cifar_resnet20_torch", "jax": "runs/cifar_resnet20_jax"}
