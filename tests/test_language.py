"""The .res language: syntax, parameters, extends, recipes, and the IR they resolve to."""

from __future__ import annotations

import textwrap

import pytest

from resdsl import ir
from resdsl.diagnostics import SpecError
from resdsl.frontend import check, load_spec


def write(tmp_path, name: str, text: str):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


CIFAR_NET = """
    param n = 3   # blocks per stage
    network net {
        input    3x32x32
        classes  10
        stem     cifar
        block    basic
        shortcut A
        stage first: n x 16
        stage: n x 32, stride 2
        stage: n x 64,
               stride 2          # a comma at the end of a line continues the statement
    }
"""


def test_comments_continuations_and_parameters(tmp_path):
    spec, analysis = load_spec(write(tmp_path, "net.res", CIFAR_NET))
    net = spec.network
    assert [s.name for s in net.stages] == ["first", "stage2", "stage3"]
    assert [s.blocks for s in net.stages] == [3, 3, 3]
    assert net.stages[2].stride == 2
    assert spec.params == {"n": 3}
    assert analysis.depth == 20 and spec.train is None


def test_set_overrides_a_parameter(tmp_path):
    path = write(tmp_path, "net.res", CIFAR_NET)
    spec, analysis = load_spec(path, ["n=18"])
    assert analysis.depth == 110 and analysis.params == 1_727_962
    assert spec.params == {"n": 18}


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["m=3"], "`--set m=3`: unknown parameter `m`"),
        (["n=2.5"], "parameter `n` is a whole number"),
        (["n"], "is not of the form NAME=VALUE"),
        (["n=0"], "block count must be a positive whole number, got 0"),
    ],
)
def test_bad_set_values_are_reported(tmp_path, sets, message):
    path = write(tmp_path, "net.res", CIFAR_NET)
    with pytest.raises(SpecError) as error:
        load_spec(path, sets)
    assert message in error.value.report.render()


def test_expressions_in_widths(tmp_path):
    text = (
        CIFAR_NET.replace("param n = 3", "param n = 3\nparam k = 2")
        .replace("n x 32", "n x 16*k")
        .replace("n x 64", "n x (16 + 16) * k - 0")
    )
    spec, _ = load_spec(write(tmp_path, "net.res", text))
    assert [s.width for s in spec.network.stages] == [16, 32, 64]


def test_extends_overrides_params_statements_and_named_stages(tmp_path):
    write(tmp_path, "base.res", CIFAR_NET)
    child = write(
        tmp_path,
        "child.res",
        """
        param n = 5
        network child extends "base.res" {
            shortcut B
            stage first: 2 x 24
        }
        """,
    )
    spec, _ = load_spec(child)
    net = spec.network
    assert net.name == "child"
    assert [(s.blocks, s.width) for s in net.stages] == [(2, 24), (5, 32), (5, 64)]
    assert {s.shortcut for s in net.stages} == {"B"}
    assert spec.files[-1].endswith("child.res") and len(spec.files) == 2


def test_per_stage_shortcut_overrides_the_network(tmp_path):
    text = CIFAR_NET.replace("stage: n x 32, stride 2", "stage: n x 32, stride 2, shortcut C")
    spec, _ = load_spec(write(tmp_path, "net.res", text))
    assert [s.shortcut for s in spec.network.stages] == ["A", "C", "A"]


def test_block_forms(tmp_path):
    forms = {
        "preact_bottleneck": ("bottleneck", True, "B"),
        "plain_basic": ("basic", False, "none"),
        "plain_bottleneck": ("bottleneck", False, "none"),
    }
    for written, (kind, preact, shortcut) in forms.items():
        text = CIFAR_NET.replace("block    basic", f"block    {written}")
        if shortcut == "none":
            text = text.replace("shortcut A", "")
        else:
            text = text.replace("shortcut A", f"shortcut {shortcut}")
        spec, analysis = load_spec(write(tmp_path, f"{written}.res", text))
        lowered = analysis.lowered
        first = lowered.stages[0].blocks[0]
        convs = [layer.name for layer in first.layers() if layer.kind == "conv"]
        assert (len(convs), lowered.preact, spec.network.stages[0].shortcut) == (
            {"basic": 2, "bottleneck": 3}[kind] + (shortcut == "B"),  # B projects 16 -> 64
            preact,
            shortcut,
        )
        assert first.residual == (shortcut != "none")


def test_bottleneck_options_and_defaults(tmp_path):
    text = CIFAR_NET.replace(
        "block    basic", "block    bottleneck, groups 4, width_per_group 8, expansion 2"
    ).replace("shortcut A", "shortcut B")
    spec, analysis = load_spec(write(tmp_path, "net.res", text))
    block = spec.network.stages[0].block
    assert (block.name, block.args) == (
        "bottleneck", {"groups": 4, "width_per_group": 8, "expansion": 2},
    )  # fmt: skip
    conv2 = next(la for la in analysis.lowered.stages[0].blocks[0].layers() if la.name == "conv2")
    assert conv2.out[0] == 8  # 16 * 8 // 64 * 4
    assert conv2.args["groups"] == 4
    assert analysis.lowered.stages[-1].out[0] == 128


def test_init_batchnorm_head(tmp_path):
    text = CIFAR_NET.replace(
        "shortcut A",
        "shortcut A\n        init kaiming_normal fan_out, zero_init_residual\n"
        "        batchnorm momentum 0.01, eps 1e-3\n        head dropout 0.5",
    )
    net = load_spec(write(tmp_path, "net.res", text))[0].network
    assert net.init == ir.Init(mode="fan_out", zero_init_residual=True)
    assert (net.batchnorm.momentum, net.batchnorm.eps) == (0.01, 1e-3)
    assert net.head.dropout == 0.5
    default = load_spec(write(tmp_path, "d.res", CIFAR_NET))[0].network
    assert default.init == ir.Init(mode="fan_in", zero_init_residual=False)
    assert (default.batchnorm.momentum, default.batchnorm.eps, default.head.dropout) == (
        0.1, 1e-5, 0.0,
    )  # fmt: skip


def test_stems(tmp_path):
    for stem, out in (("imagenet", (64, 56, 56)), ("deep, width 32", (32, 56, 56))):
        text = CIFAR_NET.replace("3x32x32", "3x224x224").replace("stem     cifar", f"stem {stem}")
        text = text.replace("shortcut A", "shortcut B")
        spec, analysis = load_spec(write(tmp_path, "net.res", text))
        assert analysis.stem.out == out


def test_paper_cifar_recipe_expands_to_the_papers_settings():
    spec, _ = load_spec("specs/cifar/resnet20.res")
    train = spec.train
    assert train.recipe == "paper_cifar"
    assert train.data == ir.Dataset(kind="cifar10", path="data/cifar-10-batches-py")
    assert train.preprocess == (ir.SubtractMean(mode="per_pixel"),)
    assert train.augment == (ir.Pad(pixels=4), ir.RandomCrop(size=32), ir.HFlip())
    assert train.optimizer == ir.SGD(lr=0.1, momentum=0.9, weight_decay=1e-4)
    assert train.batch == 128
    assert train.schedule == ir.MultiStep(factor=0.1, milestones=(32000, 48000))
    assert train.length == ir.Length(value=64000, unit="iterations")
    assert train.eval == (ir.SingleView(),)
    assert train.warmup is None and train.val_split == 0


def test_resnet110_warms_up():
    train = load_spec("specs/cifar/resnet110.res")[0].train
    assert train.warmup == ir.WarmupUntil(lr=0.01, train_error=0.8)
    assert train.optimizer.lr == 0.1


def test_paper_imagenet_recipe():
    train = load_spec("specs/resnet50.res")[0].train
    assert train.data.kind == "imagefolder"
    assert train.augment == (
        ir.ScaleShorter(low=256, high=480),
        ir.RandomCrop(size=224),
        ir.HFlip(),
        ir.PCALighting(std=0.1),
    )
    assert train.schedule == ir.Plateau(factor=0.1, patience=5, threshold=0.001)
    assert train.validate_every == 5000 and train.batch == 256
    assert train.length == ir.Length(value=600_000, unit="iterations")
    assert train.eval == (ir.TenCrop(resize=256), ir.MultiScale(scales=(224, 256, 384, 480, 640)))


def test_recipe_fields_are_overridden_one_by_one(tmp_path):
    write(tmp_path, "base.res", CIFAR_NET)
    child = write(
        tmp_path,
        "child.res",
        """
        network child extends "base.res"
        train paper_cifar {
            optimizer sgd, lr 0.05, nesterov
            batch     64
            schedule  lr * 0.2 at 100, 200
            length    300 epochs
            val_split 5000
        }
        """,
    )
    train = load_spec(child)[0].train
    assert train.optimizer == ir.SGD(lr=0.05, momentum=0.9, weight_decay=1e-4, nesterov=True)
    assert train.batch == 64 and train.val_split == 5000
    assert train.length == ir.Length(value=300, unit="epochs")
    assert train.schedule.milestones == (100, 200)
    assert train.augment == (ir.Pad(pixels=4), ir.RandomCrop(size=32), ir.HFlip())  # kept


def test_fashion_mnist_pipeline_pads_28_to_32():
    train = load_spec("specs/fashion-mnist/resnet20.res")[0].train
    assert train.data == ir.Dataset(kind="fashion_mnist", path="/usr/share/datasets/fashion-mnist")
    assert train.preprocess == (ir.PadTo(size=32), ir.SubtractMean(mode="per_pixel"))


def test_a_train_section_without_recipe(tmp_path):
    path = write(
        tmp_path,
        "net.res",
        CIFAR_NET
        + """
        train {
            data      synthetic
            optimizer sgd, lr 0.1
            batch     32
            schedule  constant
            warmup    lr 0.01 for 10
            length    100 iterations
            eval      single_view
        }
        """,
    )
    train = load_spec(path)[0].train
    assert train.recipe is None and train.data.kind == "synthetic"
    assert train.schedule == ir.Constant() and train.warmup == ir.WarmupFor(lr=0.01, length=10)


def test_ir_nodes_keep_their_source_spans():
    spec, _ = load_spec("specs/resnet34.res")
    stage = spec.network.stages[1]
    assert (stage.span.path, stage.span.line, stage.span.column) == ("specs/resnet34.res", 9, 5)
    # statements inherited through `extends` point into the file that wrote them
    tv = load_spec("specs/torchvision/resnet34.res")[0].network
    assert tv.stages[0].span.path == "specs/resnet34.res"
    assert tv.init.span.path == "specs/torchvision/resnet34.res"


def test_check_returns_every_problem_of_a_file(tmp_path):
    text = CIFAR_NET.replace("block    basic", "block    basc").replace("stem     cifar", "stem x")
    report = check(write(tmp_path, "net.res", text))
    assert len(report.diagnostics) == 2


def test_ir_is_immutable_and_validated():
    spec, _ = load_spec("specs/resnet18.res")
    with pytest.raises(Exception):
        spec.network.classes = 10
    with pytest.raises(Exception):
        ir.Stage(name="s", blocks=0, width=16, shortcut="A", block=ir.Block(kind="basic"))
    with pytest.raises(Exception):
        ir.Block(kind="basic", expansion=4)


def test_parameters_may_use_parameters_declared_later_in_the_chain(tmp_path):
    write(tmp_path, "base.res", CIFAR_NET)
    child = write(
        tmp_path,
        "child.res",
        """
        param j = 2
        param n = j * 3
        network child extends "base.res"
        """,
    )
    spec, analysis = load_spec(child)
    assert spec.params == {"n": 6, "j": 2} and analysis.depth == 38


def test_a_rejected_set_value_is_reported_once(tmp_path):
    text = CIFAR_NET.replace("param n = 3", "param n = 3\nparam m = n + 1")
    with pytest.raises(SpecError) as error:
        load_spec(write(tmp_path, "net.res", text), ["n=2.5"])
    assert len(error.value.report.diagnostics) == 1


def test_stage_shortcuts_can_replace_the_network_one(tmp_path):
    text = (
        CIFAR_NET.replace("shortcut A", "")
        .replace("n x 16", "n x 16, shortcut A")
        .replace("n x 32, stride 2", "n x 32, stride 2, shortcut B")
        .replace("n x 64,", "n x 64, shortcut C,")
    )
    spec, _ = load_spec(write(tmp_path, "net.res", text))
    assert [s.shortcut for s in spec.network.stages] == ["A", "B", "C"]


@pytest.mark.parametrize("marker", [".git", "pyproject.toml", ".resdsl"])
def test_extends_reaches_across_the_folders_of_a_project(tmp_path, monkeypatch, marker):
    project = tmp_path / "project"
    (project / "specs" / "base").mkdir(parents=True)
    write(project / "specs" / "base", "base.res", CIFAR_NET.replace("network net", "network base"))
    mine = project / "specs" / "mine"
    mine.mkdir(parents=True)
    write(mine, "x.res", 'network x extends "../base/base.res"\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # resdsl run from outside the project
    with pytest.raises(SpecError, match="outside the spec's project"):
        load_spec(mine / "x.res")  # no marker: the spec's own directory only
    (project / marker).mkdir() if marker == ".git" else (project / marker).write_text("")
    assert load_spec(mine / "x.res")[0].network.name == "x"
    write(mine, "y.res", f'network y extends "{tmp_path}/outside.res"\n')
    write(tmp_path, "outside.res", CIFAR_NET)
    with pytest.raises(SpecError, match="outside the spec's project"):
        load_spec(mine / "y.res")  # out of the project: refused, never read
