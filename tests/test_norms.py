"""Group normalisation: the `groupnorm` layer, the network's `norm groupnorm G` that makes every
`batchnorm` of its blocks, stem and head one, timm's resnet50_gn, and the mistakes of both."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

from resdsl.compile import compile_spec
from resdsl.frontend import check, load_spec
from tests.test_definitions import torch_model

torch = pytest.importorskip("torch")


def write(tmp_path: Path, text: str, name: str = "n.res") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def torch_module(tmp_path: Path, spec_path, name: str):
    """The spec's PyTorch model.py as a module, its analysis, and the package's directory."""
    module, analysis = torch_model(tmp_path, spec_path, name)
    return module, analysis, Path(module.__file__).parent


def randomise_affine(model, seed: int = 0):
    """Random GroupNorm scales and shifts (they start at 1 and 0, which hides a mix-up)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.GroupNorm):
                m.weight.copy_(torch.empty_like(m.weight).uniform_(0.5, 1.5, generator=generator))
                m.bias.copy_(torch.empty_like(m.bias).uniform_(-0.2, 0.2, generator=generator))
    return model.eval()


def test_resnet50_gn_is_timms(tmp_path):
    timm = pytest.importorskip("timm")
    module, analysis, out = torch_module(tmp_path, "specs/timm/resnet50_gn.res", "gn50")
    assert analysis.params == 25_557_032  # timm 1.0.31's resnet50_gn
    text = (out / "model.py").read_text()
    assert "nn.GroupNorm(32, planes)" in text and "BatchNorm" not in text
    torch.manual_seed(0)
    reference = randomise_affine(timm.create_model("resnet50_gn", pretrained=False))
    model = module.build_model().eval()
    model.load_state_dict(reference.state_dict(), strict=True)  # no running statistics
    assert not any("running" in name for name in model.state_dict())
    x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, got = reference(x), model(x)
    assert ((got - expected).abs().max() / expected.abs().max()).item() <= 1e-5


def test_a_gn_network_in_jax_gives_torchs_logits_and_keeps_no_statistics(tmp_path):
    jax = pytest.importorskip("jax")
    import numpy as np

    from tests.test_jax_model import load_package

    text = """network n {
    input    3x24x24
    classes  5
    stem     cifar
    block    preact_basic
    shortcut B
    norm     groupnorm 4, eps 1e-3
    stage a: 2 x 16
    stage b: 1 x 32, stride 2
}
"""
    spec, analysis = load_spec(write(tmp_path, text))
    assert {"groupnorm"} <= analysis.lowered.kinds and "batchnorm" not in analysis.lowered.kinds
    compile_spec(spec, analysis, backend="jax", output=tmp_path / "j")
    compile_spec(spec, analysis, backend="torch", output=tmp_path / "t")
    package = load_package(tmp_path / "j", "norms_gn_jax")
    torch_model = importlib.util.spec_from_file_location("norms_gn_t", tmp_path / "t" / "model.py")
    module = importlib.util.module_from_spec(torch_model)
    torch_model.loader.exec_module(module)
    torch.manual_seed(0)
    model = randomise_affine(module.build_model())
    assert isinstance(model.bn_final, torch.nn.GroupNorm)  # the pre-activation head's norm
    assert model.bn_final.eps == 1e-3 and model.bn_final.num_groups == 4
    variables = package.from_torch({k: v.numpy() for k, v in model.state_dict().items()})
    assert set(variables) == {"params"}
    images = torch.randn(3, 3, 24, 24, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = model(images).numpy()
    got = np.asarray(
        package.logits(variables, jax.numpy.asarray(images.numpy().transpose(0, 2, 3, 1)))
    )
    assert np.abs(got - expected).max() <= 1e-4 * max(1.0, np.abs(expected).max())
    # training mode normalises as evaluation does: the same logits, nothing to update
    trained = package.build_model().apply(variables, jax.numpy.asarray(
        images.numpy().transpose(0, 2, 3, 1)), train=True)  # fmt: skip
    assert np.abs(np.asarray(trained) - got).max() <= 1e-5


def test_a_groupnorm_layer_in_a_block(tmp_path):
    text = """block gn_basic(planes, stride = 1) {
    conv1: conv 3x3 planes, stride stride
    gn1:   groupnorm 8
    relu
    conv2: conv 3x3 planes
    gn2:   groupnorm planes // 4, eps 1e-6, zero_init
    add shortcut
    relu
}

network n {
    input    3x16x16
    classes  4
    stem     cifar
    block    gn_basic
    shortcut B
    init     kaiming_normal, zero_init_residual
    stage a: 1 x 16
    stage b: 1 x 32, stride 2
}
"""
    module, analysis, out = torch_module(tmp_path, write(tmp_path, text), "gnblock")
    code = (out / "model.py").read_text()
    assert (
        "nn.GroupNorm(8, planes)" in code and "nn.GroupNorm(planes // 4, planes, eps=1e-06)" in code
    )
    assert "isinstance(m, (nn.BatchNorm2d, nn.GroupNorm))" in code  # the stem's BN and the GNs
    model = module.build_model()
    assert sum(p.numel() for p in model.parameters()) == analysis.params
    assert model.layer2[0].gn2.num_groups == 8 and (model.layer2[0].gn2.weight == 0).all()
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 4)


NET = """network n {{
    input    3x32x32
    classes  10
    stem     cifar
    block    basic
    shortcut A
{extra}    stage a: 1 x 16
    stage b: 1 x 32, stride 2
}}
"""


@pytest.mark.parametrize(
    ("extra", "message", "line"),
    [
        ("    norm groupnorm 6\n", "GroupNorm's 6 groups do not divide its 16 channels", None),
        ("    norm groupnorm\n", "`norm groupnorm` needs its number of groups", 7),
        ("    norm groupnorm 0\n", "the number of groups must be a positive whole number", 7),
        ("    norm groupnorm 4, eps 0\n", "GroupNorm epsilon must be", 7),
        ("    norm groupnorm 4, momentum 0.1\n", "unknown option `momentum` for `norm`", 7),
        ("    norm layernorm\n", "unknown norm `layernorm`", 7),
        ("    norm batchnorm 4\n", "`norm batchnorm` takes no value or options", 7),
        ("    batchnorm momentum 0.01\n    norm groupnorm 4\n",
         "`batchnorm` sets BN's momentum and eps, but this network's norm is groupnorm", 7),
    ],
)  # fmt: skip
def test_norm_mistakes_are_located(tmp_path, extra, message, line):
    report = check(write(tmp_path, NET.format(extra=extra)))
    rendered = report.render()
    assert message in rendered, rendered
    assert "Traceback" not in rendered
    assert all(d.span is not None for d in report.diagnostics), rendered
    if line is not None:
        assert any(d.span.line == line for d in report.diagnostics), rendered


def test_a_groupnorm_layer_that_does_not_divide_its_channels_names_the_block(tmp_path):
    text = """block g(planes, stride = 1) {
    c: conv 3x3 planes, stride stride
    n: groupnorm 3
    add shortcut
}
""" + NET.format(extra="").replace("block    basic", "block    g")
    rendered = check(write(tmp_path, text)).render()
    assert "GroupNorm's 3 groups do not divide its 16 channels" in rendered, rendered
    assert "Traceback" not in rendered


# --- efficient channel attention ------------------------------------------------------------


def test_ecaresnet50d_is_timms(tmp_path):
    timm = pytest.importorskip("timm")
    from tests.test_jax_model import randomise_batchnorm

    module, analysis, out = torch_module(tmp_path, "specs/timm/ecaresnet50d.res", "eca50d")
    assert analysis.params == 25_576_350  # timm 1.0.31's ecaresnet50d
    torch.manual_seed(0)
    reference = randomise_batchnorm(timm.create_model("ecaresnet50d", pretrained=False), 3, 64, 64)
    model = module.build_model().eval()
    model.load_state_dict(reference.state_dict(), strict=True)
    # the kernel from the channels: 5 taps across 256, 512 and 1024 channels, 7 across 2048
    assert [model.layer1[0].se.conv.kernel_size, model.layer3[0].se.conv.kernel_size,
            model.layer4[0].se.conv.kernel_size] == [(5,), (5,), (7,)]  # fmt: skip
    x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, got = reference(x), model(x)
    assert ((got - expected).abs().max() / expected.abs().max()).item() <= 1e-5


@pytest.mark.parametrize(
    ("layer", "message"),
    [
        ("c: channel_conv 3", "channel_conv runs across the channels of a pooled map, got 32x32"),
        ("global_avg_pool\n    c: channel_conv 4", "channel_conv's kernel size must be odd"),
        ("k = log2(0)\n    c: conv 3x3 k", "log2 needs a positive value"),
    ],
)
def test_channel_conv_mistakes_are_located(tmp_path, layer, message):
    text = f"""block g(planes, stride = 1) {{
    {layer}
}}
""" + NET.format(extra="").replace("block    basic", "block    g").replace("    shortcut A\n", "")
    report = check(write(tmp_path, text))
    rendered = report.render()
    assert message in rendered, rendered
    assert "Traceback" not in rendered and all(d.span for d in report.diagnostics)


# --- the new constructs, trained ------------------------------------------------------------

TRAINED = """block eca_basic() extends basic {
    after bn2 {
        se: eca
    }
}

network n {
    input    3x16x16
    classes  10
    stem     cifar
    block    eca_basic
    shortcut B
    norm     groupnorm 4
    stage a: 1 x 16
    stage b: 1 x 32, stride 2
}

train paper_cifar {
    data       synthetic
    augment    pad 2, random_crop 16, hflip
}
"""


@pytest.mark.long
@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_a_gn_network_with_eca_gates_trains(tmp_path, backend):
    """GroupNorm everywhere and ECA's 1-D convolution, two iterations of each trainer: a
    checkpoint, a finite loss, and the test error measured."""
    import json

    from tests.test_export import train_two_iterations

    pytest.importorskip("jax" if backend == "jax" else "torch")
    spec, analysis = load_spec(write(tmp_path, TRAINED))
    assert {"groupnorm", "channel_conv"} <= analysis.lowered.kinds
    package = compile_spec(spec, analysis, backend=backend, output=tmp_path / "pkg")
    checkpoint = train_two_iterations(package)
    assert checkpoint.stat().st_size > 0
    final = json.loads((tmp_path / "run" / "final.json").read_text())
    assert final["iterations"] == 2 and 0 <= final["test_top1_error"] <= 1
    logged = [
        json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    assert all(math.isfinite(r["train_loss"]) for r in logged if "train_loss" in r)
