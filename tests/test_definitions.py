"""Blocks, stems and shortcuts defined in .res: the prelude, definitions in specs, per-stage
blocks, dilation, dropout and stochastic depth; the published networks they build (timm's
SE-ResNet-50, torchvision's dilated ResNet-50) with their weights; the errors of definitions."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from resdsl.compile import compile_spec
from resdsl.definitions import PRELUDE
from resdsl.diagnostics import Report, SpecError
from resdsl.frontend import check, load_spec
from resdsl.parse import parse_text
from tests.helpers import ROOT

torch = pytest.importorskip("torch")


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def torch_model(tmp_path: Path, spec_path, name: str = "m"):
    spec, analysis = load_spec(spec_path)
    out = tmp_path / f"{name}_torch"
    compile_spec(spec.model_copy(update={"train": None}), analysis, backend="torch", output=out)
    module_spec = importlib.util.spec_from_file_location(f"defs_{name}", out / "model.py")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module, analysis


# --- the prelude ------------------------------------------------------------------------------


def test_the_prelude_is_an_ordinary_spec_file_with_every_built_in():
    report = Report()
    prelude = parse_text(PRELUDE.read_text(), "prelude.res", report)
    assert not report.diagnostics
    names = {(d.kind, d.name.text) for d in prelude.definitions}
    for block in ("basic", "bottleneck", "preact_basic", "preact_bottleneck", "plain_basic",
                  "plain_bottleneck", "squeeze_excite"):  # fmt: skip
        assert ("block", block) in names
    for stem in ("imagenet", "cifar", "deep", "tiered"):
        assert ("stem", stem) in names
    for shortcut in "ABCD":
        assert ("shortcut", shortcut) in names


def test_the_compiler_has_no_block_specific_code():
    """Block, stem and shortcut names appear in the prelude, not in the compiler's code (the
    shortcuts' descriptions are the comments above their definitions)."""
    names = ['"bottleneck"', '"preact_basic"', '"imagenet"', '"cifar"', '"A"', '"B"', '"C"', '"D"']
    # the train section's readers name ImageNet's statistics and policy (`normalize imagenet`,
    # `auto_augment imagenet`), not the stem
    training = {ROOT / "resdsl" / "ir.py", ROOT / "resdsl" / "resolve" / "train.py",
                ROOT / "resdsl" / "backends" / "templating.py"}  # fmt: skip
    for path in (ROOT / "resdsl").rglob("*.py"):
        text = path.read_text()
        for name in names:
            if name == '"imagenet"' and path in training:
                continue
            assert name not in text, (path, name)


# --- published networks -----------------------------------------------------------------------


def test_se_resnet50_is_timms_seresnet50(tmp_path):
    timm = pytest.importorskip("timm")
    module, analysis = torch_model(tmp_path, "specs/variants/se_resnet50.res", "se50")
    assert analysis.params == 28_088_024
    torch.manual_seed(0)
    reference = timm.create_model("seresnet50", pretrained=False).eval()
    model = module.build_model().eval()
    model.load_state_dict(reference.state_dict(), strict=True)
    assert any(name.endswith("se.fc1.weight") for name in model.state_dict())
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert (model(x) - reference(x)).abs().max().item() <= 1e-5


def test_dilated_resnet50_is_torchvisions(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    module, analysis = torch_model(tmp_path, "specs/variants/resnet50_dilated.res", "dil")
    assert analysis.params == 25_557_032
    assert analysis.stages[-1].out == (2048, 28, 28)  # output stride 8
    torch.manual_seed(0)
    reference = torchvision.models.resnet50(replace_stride_with_dilation=[False, True, True])
    reference = reference.eval()
    model = module.build_model().eval()
    model.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(2, 3, 160, 160)
    with torch.no_grad():
        assert (model(x) - reference(x)).abs().max().item() <= 1e-5
        assert model.forward_features(x).shape[-1] == 20  # 160 / 8


def test_mixed_basic_and_bottleneck_stages(tmp_path):
    module, analysis = torch_model(tmp_path, "specs/variants/resnet_hybrid.res", "hybrid")
    model = module.build_model()
    kinds = [type(layer[0]).__name__ for layer in (model.layer1, model.layer2, model.layer3,
                                                   model.layer4)]  # fmt: skip
    assert kinds == ["BasicBlock", "BasicBlock", "Bottleneck", "Bottleneck"]
    assert sum(p.numel() for p in model.parameters()) == analysis.params == 24_968_488
    # conv4_x and conv5_x are torchvision ResNet-50's, parameter for parameter
    torchvision = pytest.importorskip("torchvision")
    reference = torchvision.models.resnet50()
    for name in ("layer3", "layer4", "fc"):
        ours = {k: v.shape for k, v in getattr(model, name).state_dict().items()}
        theirs = {k: v.shape for k, v in getattr(reference, name).state_dict().items()}
        if name == "layer3":  # its first projection reads 128 channels, not 512
            ours.pop("0.conv1.weight"), theirs.pop("0.conv1.weight")
            ours.pop("0.downsample.0.weight"), theirs.pop("0.downsample.0.weight")
        assert ours == theirs


def test_wrn_dropout_sits_between_the_convolutions(tmp_path):
    module, analysis = torch_model(tmp_path, "specs/variants/wrn_28_10_dropout.res", "wrn")
    assert analysis.params == load_spec("specs/variants/wrn_28_10.res")[1].params
    block = module.build_model().layer1[1]  # 160 channels in and out
    names = [name for name, _ in block.named_children()]
    assert names.index("bn2") < names.index("dropout") < names.index("conv2")
    assert block.dropout.p == 0.3
    x = torch.randn(2, 160, 8, 8)
    block.eval()
    with torch.no_grad():
        assert torch.equal(block(x), block(x))  # off in evaluation
    block.train()
    torch.manual_seed(0)
    with torch.no_grad():
        assert not torch.equal(block(x), block(x))


def test_stochastic_depth_rates_rise_linearly_and_scale_at_test_time(tmp_path):
    module, analysis = torch_model(tmp_path, "specs/cifar/resnet110_stochastic_depth.res", "sd")
    assert analysis.params == 1_727_962
    model = module.build_model()
    blocks = [block for layer in (model.layer1, model.layer2, model.layer3) for block in layer]
    rates = [block.drop_path.p for block in blocks]
    assert len(rates) == 54
    assert rates[0] == pytest.approx(0.5 / 54) and rates[-1] == pytest.approx(0.5)
    assert all(b > a for a, b in zip(rates, rates[1:]))
    block = blocks[-1].eval()
    x = torch.rand(4, 64, 8, 8)
    with torch.no_grad():
        branch = block.bn2(block.conv2(block.relu(block.bn1(block.conv1(x)))))
        assert torch.allclose(block(x), torch.relu(x + 0.5 * branch), atol=1e-6)
    # in training each sample keeps its whole branch, unscaled, or drops it (p = 0.5 here)
    drop = block.drop_path.train()
    torch.manual_seed(0)
    out = drop(torch.ones(1000, 1, 1, 1)).flatten()
    assert set(out.tolist()) == {0.0, 1.0}
    assert 400 < int((out == 0).sum()) < 600


def test_drop_path_drops_whole_samples_and_scales_as_timm():
    spec = """
network dp {
    input    3x8x8
    classes  10
    stem     cifar, width 8
    block    basic
    shortcut A
    drop_path 0.5
    stage: 2 x 8
}
"""
    import tempfile

    with tempfile.TemporaryDirectory() as directory:
        module, _ = torch_model(Path(directory), write(Path(directory), "dp.res", spec), "dp")
        block = module.build_model().layer1[1]
        assert block.drop_path.p == 0.5 and not block.drop_path.survival
        ones = torch.ones(1000, 1, 1, 1)
        block.drop_path.train()
        torch.manual_seed(0)
        out = block.drop_path(ones).flatten()
        assert set(out.tolist()) == {0.0, 2.0}  # dropped, or kept and scaled by 1 / (1 - p)
        assert 400 < int((out == 0).sum()) < 600
        block.drop_path.eval()
        assert torch.equal(block.drop_path(ones), ones)


# --- definitions in a spec ----------------------------------------------------------------------

SE_SPEC = """
# a block defined in the spec: basic with a squeeze-and-excitation gate before the add
block se_basic(planes, stride = 1, reduction = 4) extends basic {
    after bn2 {
        se: squeeze_excite, reduction reduction
    }
}

network se_net {
    input    3x16x16
    classes  10
    stem     cifar
    block    se_basic
    shortcut A
    stage: 2 x 16
    stage: 2 x 32, stride 2
}
"""


def test_a_block_defined_in_a_spec(tmp_path):
    module, analysis = torch_model(tmp_path, write(tmp_path, "se.res", SE_SPEC), "se")
    model = module.build_model()
    assert sum(p.numel() for p in model.parameters()) == analysis.params
    # 16 -> 4 -> 16 and 32 -> 8 -> 32, 1x1 convolutions with bias, one gate per block
    se_params = 2 * (16 * 4 + 4 + 4 * 16 + 16) + 2 * (32 * 8 + 8 + 8 * 32 + 32)
    base = load_spec(write(tmp_path, "b.res", SE_SPEC.replace("block    se_basic",
                                                              "block    basic")))[1]  # fmt: skip
    assert analysis.params - base.params == se_params
    assert type(model.layer1[0].se).__name__ == "SqueezeExciteBlock"
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 10)


def test_stems_and_shortcuts_defined_in_a_spec(tmp_path):
    text = """
stem two_convs(width = 16) {
    conv1: conv 3x3 width // 2
    bn1:   batchnorm
           gelu
    conv2: conv 3x3 width
    bn2:   batchnorm
           silu
}

# a projection with a 3x3 convolution where the shape changes
shortcut wide(outplanes, stride) {
    if stride != 1 or inplanes != outplanes {
        conv 3x3 outplanes, stride stride
        batchnorm
    }
}

network custom {
    input    3x16x16
    classes  5
    stem     two_convs, width 16
    block    basic
    shortcut wide
    stage: 1 x 16
    stage: 1 x 32, stride 2
}
"""
    module, analysis = torch_model(tmp_path, write(tmp_path, "c.res", text), "custom")
    model = module.build_model()
    assert sum(p.numel() for p in model.parameters()) == analysis.params
    assert analysis.stem.params == 3 * 9 * 8 + 16 + 8 * 9 * 16 + 32
    assert model.layer2[0].downsample[0].kernel_size == (3, 3)
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 5)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("block x(planes, stride = 1) {\n    conv 3x3 planes\n    add shortcut\n}\n",
         "this conv has weights, so it needs a name"),
        ("block x(planes, stride = 1) {\n    c: convv 3x3 planes\n}\n", "unknown layer `convv`"),
        ("block x(planes, stride = 1) extends basic {\n    after bn9 {\n        relu\n    }\n}\n",
         "has no layer `bn9`"),
        ("block x(planes, stride = 1) extends basic {\n    remove conv9\n}\n",
         "has no layer `conv9`"),
        ("block x(planes, stride = 1) extends basics {\n}\n", "extends an unknown block"),
        ("block basic(planes) {\n    relu\n}\n", "is already defined in the prelude"),
        ("block x(planes, stride = 1) {\n    c: conv 3x3 planes, strides 2\n}\n",
         "unknown option `strides` for `conv`"),
        ("block x(planes, stride = 1) {\n    d: dropout 1.5\n}\n", "must be in [0, 1)"),
        ("block x(planes, stride = 1) {\n    c: conv 3x3 planes\n    c: conv 3x3 planes\n}\n",
         "two layers are named `c`"),
    ],
)  # fmt: skip
def test_definition_errors_are_located(tmp_path, text, message):
    shortcut = "    shortcut A\n" if "add" in text or "extends basic" in text else ""
    net = f"network n {{\n    input 3x8x8\n    classes 2\n    stem cifar\n    block x\n" \
          f"{shortcut}    stage: 1 x 16\n}}\n"  # fmt: skip
    path = write(tmp_path, "bad.res", text + net)
    report = check(path)
    rendered = report.render()
    assert message in rendered, rendered
    assert "Traceback" not in rendered
    assert all(d.span is not None for d in report.diagnostics), rendered


def test_check_statements_refuse_bad_arguments(tmp_path):
    text = """
network net {
    input    3x64x64
    classes  10
    stem     imagenet
    block    bottleneck, stride_at 2x2
    shortcut B
    stage: 1 x 16
}
"""
    with pytest.raises(SpecError, match=r"stride_at is 1x1 \(the paper\) or 3x3"):
        load_spec(write(tmp_path, "net.res", text))


def test_an_if_on_a_value_that_differs_between_blocks_is_chosen_in_forward(tmp_path):
    """The class holds what either side builds (None where it is not built), and forward reads
    the value from what the constructor kept of it."""
    text = """
block odd(planes, stride = 1) {
    conv1: conv 3x3 planes, stride stride
    bn1:   batchnorm
    if stride == 2 {
        act: relu
        proj: conv 1x1 planes
    }
}

network n {
    input 3x16x16
    classes 2
    stem cifar
    block odd
    stage: 1 x 16
    stage: 1 x 32, stride 2
}
"""
    module, analysis = torch_model(tmp_path, write(tmp_path, "odd.res", text), "odd")
    model = module.build_model().eval()
    first, second = model.layer1[0], model.layer2[0]
    assert first.proj is None and isinstance(second.proj, torch.nn.Conv2d)
    assert sum(p.numel() for p in model.parameters()) == analysis.params
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        assert torch.equal(first(x), first.bn1(first.conv1(x)))
        assert torch.equal(second(x), second.proj(torch.relu(second.bn1(second.conv1(x)))))


def test_an_if_that_holds_the_add_is_refused(tmp_path):
    text = """
block odd(planes, stride = 1) {
    conv1: conv 3x3 planes, stride stride
    if stride == 2 {
        add shortcut
    }
}

network n {
    input 3x16x16
    classes 2
    stem cifar
    block odd
    shortcut B
    stage: 1 x 16
    stage: 1 x 32, stride 2
}
"""
    report = check(write(tmp_path, "odd.res", text))
    assert "on `stride == 2`, which differs between its blocks, holds `add shortcut`" in (
        report.render()
    )
    assert all(d.span is not None for d in report.diagnostics)


# --- max and min ------------------------------------------------------------------------------

MAX_MIN = """block se_rd(reduction = 16) {
    squeeze: global_avg_pool
    fc1:     conv 1x1 max(inplanes // reduction, 8), bias
    relu
    fc2:     conv 1x1 inplanes, bias
    sigmoid
    multiply
}

block b(planes, stride = 1) extends basic {
    after bn2 {
        se: se_rd, reduction (4 if planes > 16 else 16)
    }
}

network n {
    input    3x32x32
    classes  10
    stem     cifar
    block    b
    shortcut A
    stage a: 1 x max(8, 16)
    stage b: 1 x min(64, 32, 48), stride 2
}
"""


def test_max_and_min_in_values(tmp_path):
    """A block used as a layer whose width is `max(...)` of a value that differs between blocks
    (timm's `make_divisible`-style floors): counted per block, printed as Python's max."""
    module, analysis = torch_model(tmp_path, write(tmp_path, "mm.res", MAX_MIN), "mm")
    model = module.build_model()
    assert [s.out[0] for s in analysis.stages] == [16, 32]
    assert model.layer1[0].se.fc1.out_channels == 8  # max(16 // 16, 8)
    assert model.layer2[0].se.fc1.out_channels == 8  # max(32 // 4, 8)
    assert sum(p.numel() for p in model.parameters()) == analysis.params
    code = Path(module.__file__).read_text()
    assert "max(inplanes // reduction, 8)" in code
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("round(16)", "unknown function `round`"),
        ("floor(16, 8)", "`floor` takes one value"),
        ("max(16)", "`max` needs two values or more"),
    ],
)
def test_function_mistakes_are_located(tmp_path, value, message):
    text = MAX_MIN.replace("max(8, 16)", value)
    report = check(write(tmp_path, "bad.res", text))
    rendered = report.render()
    assert message in rendered and "Traceback" not in rendered, rendered
    assert all(d.span is not None and d.span.line == 22 for d in report.diagnostics), rendered


# --- a kernel size from a value ---------------------------------------------------------------

KERNEL = """block kb(planes, stride = 1, k = 3) {
    c1: conv planes, kernel k, stride stride
    n1: batchnorm
        relu
    c2: conv planes, kernel k + 2
    n2: batchnorm
        add shortcut
        relu
}

network n {
    input    3x20x20
    classes  4
    stem     cifar
    block    kb
    shortcut B
    stage a: 1 x 16, k 5
    stage b: 1 x 32, stride 2
}
"""


def test_a_kernel_size_from_a_value_in_both_backends(tmp_path):
    """`conv CHANNELS, kernel K`: the kernel a block parameter, per stage; padding keeps the size."""
    pytest.importorskip("jax")
    from tests.test_jax_model import (
        TOLERANCE,
        load_package,
        max_logit_difference,
        randomise_batchnorm,
    )

    path = write(tmp_path, "k.res", KERNEL)
    module, analysis = torch_model(tmp_path, path, "kernel")
    model = randomise_batchnorm(module.build_model(), 3, 20, 20)
    assert (model.layer1[0].c1.kernel_size, model.layer1[0].c2.kernel_size) == ((5, 5), (7, 7))
    assert (model.layer2[0].c1.kernel_size, model.layer2[0].c2.kernel_size) == ((3, 3), (5, 5))
    assert sum(p.numel() for p in model.parameters()) == analysis.params
    assert "kernel_size=k, stride=stride, padding=(k - 1) // 2" in Path(module.__file__).read_text()
    spec, _ = load_spec(path)
    compile_spec(spec.model_copy(update={"train": None}), analysis, backend="jax",
                 output=tmp_path / "kj")  # fmt: skip
    package = load_package(tmp_path / "kj", "definitions_kernel_jax")
    images = torch.randn(2, 3, 20, 20, generator=torch.Generator().manual_seed(3))
    assert max_logit_difference(package, model, images) <= TOLERANCE


@pytest.mark.parametrize(
    ("layer", "message"),
    [
        ("c1: conv 3x3 planes, kernel k, stride stride", "the kernel size is given twice"),
        ("c1: conv planes, kernel, stride stride", "`kernel` needs a value"),
        ("c1: conv planes, kernel (5 if k > 3 else 1), stride stride", None),
        ("c1: conv planes, stride stride", "`conv` needs channels"),  # planes is the kernel
        ("c1: conv planes, kernel k - 5, stride stride", "conv's kernel must be a positive size"),
    ],
)  # fmt: skip
def test_kernel_option_mistakes_are_located(tmp_path, layer, message):
    text = KERNEL.replace("c1: conv planes, kernel k, stride stride", layer)
    report = check(write(tmp_path, "bad.res", text))
    rendered = report.render()
    if message is None:  # a kernel size chosen per block
        assert not report.diagnostics, rendered
        return
    assert message in rendered and "Traceback" not in rendered, rendered
    assert all(d.span is not None for d in report.diagnostics), rendered
