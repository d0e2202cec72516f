"""timm's byobnet models: `layout byobnet` (the keys stem.conv1.conv, stages.0.0.conv1_1x1.bn,
head.fc), a head defined in the language (`head final_conv, ...`), a block used as a shortcut;
gcresnet50t and resnet33ts against timm, and the mistakes of each."""

from __future__ import annotations

import json
import math

import pytest

from resdsl.compile import compile_spec
from resdsl.frontend import check, load_spec
from tests.test_dataflow import timms
from tests.test_norms import write

torch = pytest.importorskip("torch")


def test_gcresnet50t_is_timms(tmp_path):
    model, analysis = timms(tmp_path, "specs/timm/gcresnet50t.res", "gcresnet50t", 25_897_080)
    keys = list(model.state_dict())
    assert keys[0] == "stem.conv1.conv.weight" and keys[-1] == "head.fc.bias"
    assert (
        "stages.1.0.shortcut.conv.weight" in keys and "stages.0.0.attn.mlp_add.norm.weight" in keys
    )
    assert not any(k.startswith(("layer", "fc.", "conv1.")) for k in keys)
    assert model.fc is model.head.fc  # torchvision's `model.fc` reads the classifier
    assert analysis.depth == 52


def test_resnet33ts_is_timms(tmp_path):
    model, analysis = timms(tmp_path, "specs/timm/resnet33ts.res", "resnet33ts", 19_676_256)
    assert model.final_conv.conv.out_channels == 1280 and model.head.fc.in_features == 1280
    assert isinstance(model.stages[0][0].conv1_1x1.silu, torch.nn.SiLU)
    assert model.stages[0][1].shortcut is None  # the identity where the shape is kept


def test_the_torchvision_layout_is_unchanged(tmp_path):
    """Without `layout byobnet`, a network keeps torchvision's names."""
    from tests.test_norms import torch_module

    module, _, _ = torch_module(tmp_path, "specs/torchvision/resnet18.res", "tv18")
    keys = list(module.build_model().state_dict())
    assert (
        keys[0] == "conv1.weight"
        and keys[-1] == "fc.bias"
        and "layer2.0.downsample.0.weight" in keys
    )


BYOB = """network n {{
    input    3x32x32
    classes  10
    layout   byobnet
    stem     tiered_byob, width 16
    block    byob_bottleneck, attn_layer gca
    shortcut byob
{extra}    stage a: 1 x 8
    stage b: 1 x 16, stride 2
}}
"""


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("    layout torchvison\n", "layout"),
        ("    head final_conf, features 64\n", "unknown head `final_conf`"),
        ("    head final_conv, feature 64\n", "unknown option `feature`"),
        ("    head final_conv\n", "head `final_conv` needs a value for `features`"),
    ],
)  # fmt: skip
def test_layout_and_head_mistakes_are_located(tmp_path, extra, message):
    text = BYOB.format(extra=extra).replace(
        "    layout   byobnet\n", "", extra.startswith("    layout")
    )
    report = check(write(tmp_path, text))
    rendered = report.render()
    assert message in rendered, rendered
    assert "Traceback" not in rendered and all(d.span for d in report.diagnostics), rendered


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("attn_layer gca", "group_size 3", "a positive divisor of the block's width"),
        ("attn_layer gca", "group_size -8", "a positive divisor of the block's width"),
        ("width 16", "pool avg", "pool is none or max"),
    ],
)
def test_group_size_and_stem_pool_mistakes_are_located(tmp_path, old, new, message):
    report = check(write(tmp_path, BYOB.format(extra="").replace(old, new)))
    rendered = report.render()
    assert report.failed and message in rendered, rendered
    assert "Traceback" not in rendered and all(d.span for d in report.diagnostics), rendered


def test_a_head_definition_names_its_layers_as_the_network_does(tmp_path):
    text = """head bad(features) {
    fc: conv 1x1 features
}
""" + BYOB.format(extra="    head bad, features 32\n")
    rendered = check(write(tmp_path, text)).render()
    assert "`fc` is a name the network class keeps for itself" in rendered, rendered


def test_a_shortcut_holds_one_block_alone(tmp_path):
    text = """shortcut two(outplanes, stride) {
    conv 1x1 outplanes, stride stride
    conv_norm, channels outplanes, kernel 1
}
""" + BYOB.format(extra="").replace("shortcut byob", "shortcut two")
    rendered = check(write(tmp_path, text)).render()
    assert "a shortcut holds one block used as a layer, alone" in rendered, rendered


@pytest.mark.long
@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_a_byobnet_network_trains_and_restarts_from_its_weights(tmp_path, backend):
    """Two iterations of each trainer on a byobnet network with a head definition: the
    checkpoint holds timm's names, and --init-from with --reinit-head leaves `head.fc` out."""
    from tests.test_export import train_two_iterations

    pytest.importorskip("jax" if backend == "jax" else "torch")
    text = (
        BYOB.format(extra="    head     final_conv, features 32, act silu\n")
        + """
train paper_cifar {
    data       synthetic
    augment    pad 2, random_crop 32, hflip
}
"""
    )
    spec, analysis = load_spec(write(tmp_path, text))
    package = compile_spec(spec, analysis, backend=backend, output=tmp_path / "pkg")
    checkpoint = train_two_iterations(package)
    assert checkpoint.stat().st_size > 0
    final = json.loads((tmp_path / "run" / "final.json").read_text())
    assert final["iterations"] == 2 and 0 <= final["test_top1_error"] <= 1
    logged = [
        json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    assert all(math.isfinite(r["train_loss"]) for r in logged if "train_loss" in r)

    # weights of another class count, in timm's names: the classifier is `head.fc`
    from tests.test_export import load_module, one_line_error, run

    reference = compile_spec(spec, analysis, backend="torch", output=tmp_path / "reference")
    state = load_module(reference / "model.py", f"byob_reference_{backend}").build_model()
    state = state.state_dict()
    state["head.fc.weight"], state["head.fc.bias"] = torch.zeros(5, 32), torch.zeros(5)
    weights = tmp_path / "five.pth"
    torch.save(state, weights)
    args = ["--no-progress", "--iterations", "1", "--batch-size", "8", "--eval-images", "20",
            "--init-from", str(weights)]  # fmt: skip
    line = one_line_error(run(package, "train.py", "--out", str(tmp_path / "a"), *args))
    assert "head.fc.weight is [5, 32], not [10, 32]" in line and "--reinit-head" in line, line
    result = run(package, "train.py", "--out", str(tmp_path / "b"), *args, "--reinit-head")
    assert result.returncode == 0, result.stderr[-3000:]
