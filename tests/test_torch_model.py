"""The PyTorch backend's model: every spec builds, counts match the analysis, torchvision equality,
option A by hand, torch.export, determinism, goldens, and atomic writing."""

from __future__ import annotations

import ast
import collections
import difflib
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from resdsl import __version__
from resdsl.compile import CompileError, build_files, compile_spec, write_package
from resdsl.frontend import load_spec
from tests.helpers import ROOT, SPECS, run_cli
from tests.regenerate_goldens import GOLDENS

torch = pytest.importorskip("torch")


def load_module(path: Path, name: str = "generated_model"):
    spec = importlib.util.spec_from_file_location(f"{name}_{abs(hash(str(path)))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """spec path -> (generated model module, analysis), compiled once per test module."""
    root = tmp_path_factory.mktemp("torch")
    cache = {}

    def get(spec_path: str):
        if spec_path not in cache:
            spec, analysis = load_spec(spec_path)
            out = root / spec_path.replace("/", "_").removesuffix(".res")
            compile_spec(spec, analysis, backend="torch", output=out)
            cache[spec_path] = (load_module(out / "model.py"), analysis)
        return cache[spec_path]

    return get


@pytest.mark.parametrize("spec_path", SPECS)
def test_every_spec_builds_counts_runs_and_trains(compiled, spec_path):
    module, analysis = compiled(spec_path)
    torch.manual_seed(0)
    model = module.build_model()
    assert sum(p.numel() for p in model.parameters()) == analysis.params
    channels, height, width = analysis.network.input
    with torch.no_grad():
        x = torch.randn(2, channels, height, width)
        assert model(x).shape == (2, analysis.network.classes)
        # the features: the last stage's output, or a head definition's layers after it
        neck = analysis.lowered.neck
        features = neck.out if neck else analysis.stages[-1].out
        assert list(model.forward_features(x).shape[1:]) == list(features)
    # The graph is the same at any input size: backward on a small one (64x64 at most).
    small = torch.randn(2, channels, min(height, 64), min(width, 64))
    model(small).square().mean().backward()
    unreached = [name for name, p in model.named_parameters() if p.grad is None]
    assert not unreached


def test_generated_model_imports_only_torch():
    for _, backend, out in GOLDENS:
        if backend != "torch":
            continue
        source = (ROOT / out / "model.py").read_text()
        imports = {line.split()[1] for line in source.splitlines()
                   if line.startswith(("import ", "from "))}  # fmt: skip
        assert imports <= {"torch", "torch.nn.functional"}, imports


@pytest.mark.parametrize(
    "name",
    ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d",
     "wide_resnet50_2"],
)  # fmt: skip
def test_torchvision_state_dict_and_logits(compiled, name):
    torchvision = pytest.importorskip("torchvision")
    module, _ = compiled(f"specs/torchvision/{name}.res")
    torch.manual_seed(0)
    reference = getattr(torchvision.models, name)().eval()
    model = module.build_model().eval()
    model.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert (model(x) - reference(x)).abs().max().item() <= 1e-5


def test_option_a_by_hand(compiled):
    module, _ = compiled("specs/cifar/resnet20.res")
    x = torch.arange(2 * 4 * 4, dtype=torch.float32).reshape(1, 2, 4, 4)
    out = module.ZeroPadShortcut(extra_channels=2, stride=2)(x)
    assert out.shape == (1, 4, 2, 2)
    # identity on the first channels, subsampled by 2 ...
    assert out[0, 0].tolist() == [[0.0, 2.0], [8.0, 10.0]]
    assert out[0, 1].tolist() == [[16.0, 18.0], [24.0, 26.0]]
    # ... and zeros on the new ones
    assert out[0, 2:].abs().sum().item() == 0.0


def test_option_a_block_with_a_silent_branch_is_the_padded_identity(compiled):
    module, _ = compiled("specs/cifar/resnet20.res")
    model = module.build_model().eval()
    block = model.layer2[0]  # 16 -> 32 channels, stride 2
    torch.nn.init.zeros_(block.bn2.weight)  # F(x) = 0
    x = torch.rand(1, 16, 8, 8)
    with torch.no_grad():
        out = block(x)
    expected = torch.cat([x[:, :, ::2, ::2], torch.zeros(1, 16, 4, 4)], dim=1)
    assert torch.equal(out, torch.relu(expected))


def test_plain_blocks_have_no_shortcut(compiled):
    module, _ = compiled("specs/cifar/plain20.res")
    model = module.build_model()
    assert not any("downsample" in name for name, _ in model.named_modules())
    assert type(model.layer1[0]).__name__ == "PlainBasicBlock"


def test_init_follows_the_spec(compiled):
    paper, _ = compiled("specs/resnet18.res")
    tv, _ = compiled("specs/torchvision/resnet18.res")
    torch.manual_seed(0)
    a = paper.build_model().layer4[0].conv2.weight  # 512 in, 512 out, 3x3: fan_in == fan_out
    b = tv.build_model().layer2[0].conv1.weight  # 64 in, 128 out: fan_in 576, fan_out 1152
    assert abs(a.std().item() - (2 / (512 * 9)) ** 0.5) < 2e-3
    assert abs(b.std().item() - (2 / (128 * 9)) ** 0.5) < 3e-3
    zero, _ = compiled("specs/variants/resnet50_d.res")
    model = zero.build_model()
    assert all(block.bn3.weight.abs().sum() == 0 for layer in (model.layer1, model.layer4)
               for block in layer)  # fmt: skip


@pytest.mark.parametrize(
    "spec_path",
    ["specs/cifar/resnet20.res", "specs/torchvision/resnet50.res", "specs/variants/resnet50_d.res",
     "specs/variants/preact_resnet164.res", "specs/cifar/plain20.res"],
)  # fmt: skip
def test_torch_export(compiled, spec_path):
    module, analysis = compiled(spec_path)
    model = module.build_model().eval()
    channels, height, width = analysis.network.input
    example = (torch.randn(2, channels, height, width),)
    exported = torch.export.export(model, example)
    with torch.no_grad():
        assert torch.allclose(exported.module()(*example), model(*example), atol=1e-5)


def test_determinism_across_hash_seeds(tmp_path):
    outputs = []
    out = tmp_path / "pkg"
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        subprocess.run(
            [sys.executable, "-m", "resdsl.cli", "compile", "specs/variants/wrn_28_10.res",
             "--backend", "torch", "-o", str(out)],
            cwd=ROOT, env=env, check=True, capture_output=True,
        )  # fmt: skip
        outputs.append({p.name: p.read_bytes() for p in sorted(out.iterdir())})
    assert outputs[0] == outputs[1]


@pytest.mark.parametrize(("spec_path", "backend", "out"), GOLDENS, ids=[g[2] for g in GOLDENS])
def test_goldens_are_up_to_date(spec_path, backend, out):
    spec, analysis = load_spec(spec_path)
    files = build_files(spec, analysis, backend=backend, output=Path(out))
    on_disk = sorted(p.name for p in (ROOT / out).iterdir() if p.name != "__pycache__")
    assert on_disk == sorted(files), "regenerate with `make goldens`"
    for name, text in files.items():
        current = (ROOT / out / name).read_text(encoding="utf-8")
        if current != text:
            diff = "".join(difflib.unified_diff(
                current.splitlines(True), text.splitlines(True), f"{out}/{name}", "regenerated"
            ))  # fmt: skip
            pytest.fail(f"{out}/{name} is stale; run `make goldens`\n{diff}")


# Methods that Python or a library calls by name: used without being named in the package.
CALLED_BY_NAME = {"forward", "find_class", "persistent_load"}


@pytest.mark.parametrize(("spec_path", "backend", "out"), GOLDENS, ids=[g[2] for g in GOLDENS])
def test_every_name_a_package_defines_is_used_in_it(spec_path, backend, out):
    """No code a spec does not use: each function, class, method and module constant of a
    generated package (runtime.py included) is named somewhere else in the package."""
    texts = {path.name: path.read_text() for path in sorted((ROOT / out).glob("*.py"))}
    words = collections.Counter(re.findall(r"\w+", "\n".join(texts.values())))
    unused = []
    for name, text in texts.items():
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.ClassDef):
                defined = [node.name]
            elif isinstance(node, ast.Assign) and node.col_offset == 0:
                defined = [t.id for t in node.targets if isinstance(t, ast.Name)]
            else:
                continue
            unused += [f"{name}: {d}" for d in defined if words[d] == 1 and d != "main"
                       and not d.startswith("__") and d not in CALLED_BY_NAME]  # fmt: skip
    assert unused == []


# --- writing ---------------------------------------------------------------------------------


def test_compile_writes_the_package_and_says_where(tmp_path, capsys):
    out = tmp_path / "pkg"
    code, stdout, _ = run_cli(["compile", "specs/cifar/resnet20.res", "-o", str(out)], capsys)
    assert code == 0 and stdout.startswith(f"wrote {out.as_posix()}/: README.md, __init__.py")
    assert sorted(p.name for p in out.iterdir()) == sorted(
        build_files(*load_spec("specs/cifar/resnet20.res"), backend="torch", output=out)
    )
    header = (out / "model.py").read_text().splitlines()[:3]
    assert header[0] == f"# Generated by resdsl {__version__} from specs/cifar/resnet20.res."
    assert header[1] == "# Edit the spec, not this file; regenerate with:"
    assert header[2] == f"#   resdsl compile specs/cifar/resnet20.res --backend torch -o {out}"


def test_unknown_backend_is_a_clear_error(tmp_path, capsys):
    code, _, err = run_cli(
        ["compile", "specs/resnet18.res", "--backend", "tensorflow", "-o", str(tmp_path / "x")],
        capsys,
    )
    assert code == 1
    assert "unknown backend `tensorflow`" in err and "backends: torch, jax" in err
    assert not (tmp_path / "x").exists()


def test_a_spec_error_writes_nothing(tmp_path, capsys):
    out = tmp_path / "pkg"
    code, _, _ = run_cli(
        ["compile", "tests/specs_with_errors/unknown_stem.res", "-o", str(out)], capsys
    )
    assert code == 1 and not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_a_failure_while_writing_keeps_the_previous_output(tmp_path, monkeypatch):
    spec, analysis = load_spec("specs/cifar/resnet20.res")
    out = tmp_path / "pkg"
    compile_spec(spec, analysis, backend="torch", output=out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real_write = Path.write_text

    def failing_write(self, *args, **kwargs):
        if self.name == "model.py":
            raise OSError("disk full")
        return real_write(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", failing_write)
    spec2, analysis2 = load_spec("specs/cifar/resnet56.res")
    with pytest.raises(CompileError, match="nothing was changed"):
        compile_spec(spec2, analysis2, backend="torch", output=out, force=True)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["pkg"]  # no staging directory left


def test_a_directory_resdsl_did_not_write_is_kept_unless_forced(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("precious")
    code, _, err = run_cli(["compile", "specs/resnet18.res", "-o", str(out)], capsys)
    assert code == 1 and "was not generated by resdsl" in err and "--force" in err
    assert (out / "notes.txt").read_text() == "precious"
    code, _, _ = run_cli(["compile", "specs/resnet18.res", "-o", str(out), "--force"], capsys)
    assert code == 0 and not (out / "notes.txt").exists()


def test_files_added_to_a_generated_package_are_not_clobbered(tmp_path, capsys):
    out = tmp_path / "pkg"
    assert run_cli(["compile", "specs/resnet18.res", "-o", str(out)], capsys)[0] == 0
    (out / "runs").mkdir()
    code, _, err = run_cli(["compile", "specs/resnet34.res", "-o", str(out)], capsys)
    assert code == 1 and "holds files resdsl did not write: runs" in err
    assert (out / "runs").is_dir()
    # regenerating over its own output (with __pycache__ beside it) is fine
    (out / "runs").rmdir()
    (out / "__pycache__").mkdir()
    assert run_cli(["compile", "specs/resnet18.res", "-o", str(out)], capsys)[0] == 0


def test_write_package_refuses_a_file_in_the_way(tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(CompileError, match="not a directory"):
        write_package(target, {"a.py": ""})
