"""Dataflow inside a definition: `split N`, `each i { ... }`, `keep NAME` with `multiply NAME`
and `add NAME`, `sum` and `softmax` over an axis, `concat`; the timm models they write
(split attention, selective kernel), and the mistakes of each."""

from __future__ import annotations

from pathlib import Path

import pytest

from resdsl.frontend import check
from tests.test_norms import NET, torch_module, write

torch = pytest.importorskip("torch")


def timms(tmp_path: Path, spec: str, name: str, params: int, size: int = 64):
    """The spec's PyTorch model counts as timm's `name`, loads its state_dict strictly (BN
    statistics randomised) and gives its logits; returns the model."""
    timm = pytest.importorskip("timm")
    from tests.test_jax_model import randomise_batchnorm

    module, analysis, _ = torch_module(tmp_path, spec, name)
    assert analysis.params == params
    torch.manual_seed(0)
    reference = randomise_batchnorm(timm.create_model(name, pretrained=False), 3, size, size)
    model = module.build_model().eval()
    model.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, got = reference(x), model(x)
    assert ((got - expected).abs().max() / expected.abs().max()).item() <= 1e-5
    return model, analysis


def test_resnest50d_is_timms(tmp_path):
    model, analysis = timms(tmp_path, "specs/timm/resnest50d.res", "resnest50d", 27_483_240)
    block = model.layer2[0]  # the first block of a stage: its stride is a 3x3 average pool
    assert isinstance(block.avd_last, torch.nn.AvgPool2d) and block.avd_last.count_include_pad
    assert model.layer2[1].avd_last is None
    assert block.conv2.conv.groups == 2 and block.conv2.fc1.out_channels == 64
    assert analysis.depth == 52  # the split attention's fcs are beside the path, as ResNet-50-D


def test_skresnet18_is_timms(tmp_path):
    model, analysis = timms(tmp_path, "specs/timm/skresnet18.res", "skresnet18", 11_958_056)
    paths = model.layer2[0].conv1.paths
    assert [p.conv.dilation for p in paths] == [(1, 1), (2, 2)]
    assert [p.conv.in_channels for p in paths] == [32, 32]  # half of the 64 input channels each
    assert model.layer2[0].conv1.attn.fc_reduce.out_channels == 16
    assert analysis.depth == 18  # one path of each selective kernel, and not its attention


# The next variants a researcher writes: a few lines on a library spec, each timm's model.
NEXT = {
    "ecaresnet26t": ("timm/ecaresnet50d.res", "stem  tiered", (2, 2, 2, 2), 16_011_916),
    "resnest14d": ("timm/resnest50d.res", "", (1, 1, 1, 1), 10_611_688),
    "gcresnext26ts": (
        "timm/gcresnet50t.res",
        "stem  tiered_byob, act silu, pool max\n"
        "    block byob_bottleneck, attn_layer gca, act silu, group_size 32",
        (2, 2, 2, 2),
        10_476_600,
    ),
}


@pytest.mark.parametrize("name", sorted(NEXT))
def test_the_next_variants_are_a_few_lines(tmp_path, name):
    from tests.helpers import ROOT

    base, change, blocks, params = NEXT[name]
    stages = "\n".join(
        f"    stage conv{i + 2}_x: {n} x {64 << i}{', stride 2' if i else ''}"
        for i, n in enumerate(blocks)
    )
    text = f'network {name} extends "{ROOT / "specs" / base}" {{\n    {change}\n{stages}\n}}\n'
    assert len(text.splitlines()) <= 8
    timms(tmp_path, write(tmp_path, text), name, params)


# --- each construct, by hand ----------------------------------------------------------------

GATES = """block gated(planes, stride = 1) {
    conv1: conv 3x3 planes, stride stride
    bn1:   batchnorm
           relu
           keep features
    attn:  conv 1x1 1, bias
           softmax positions
           multiply features
           sum positions
    fc:    conv 1x1 planes, bias
           add features
           split 4
           softmax parts
           concat
           add shortcut
           relu
}
"""


def test_keep_multiply_add_softmax_and_concat_compute_what_they_say(tmp_path):
    text = GATES + NET.format(extra="").replace("block    basic", "block    gated").replace(
        "shortcut A", "shortcut B"
    )
    module, analysis, out = torch_module(tmp_path, write(tmp_path, text), "gates")
    code = (out / "model.py").read_text()
    assert "features = out" in code and "out = features * out" in code
    assert "out = out + features" in code
    torch.manual_seed(0)
    model = module.build_model().eval()
    block = model.layer1[0]
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        got = block(x)
        f = torch.relu(block.bn1(block.conv1(x)))
        attn = block.attn(f).flatten(2).softmax(-1).view(2, 1, 8, 8)
        context = (f * attn).sum((2, 3), keepdim=True)
        y = block.fc(context) + f
        y = y.view(2, 4, 4, 8, 8).softmax(1).reshape(2, 16, 8, 8)
        expected = torch.relu(y + x)
    assert torch.allclose(got, expected, atol=1e-6)
    assert sum(p.numel() for p in model.parameters()) == analysis.params


def test_the_parts_of_each_are_module_lists(tmp_path):
    text = """block parted(planes, stride = 1) {
           split 2
    each i {
        convs: conv 3x3 planes // 2, stride stride, dilation i + 1
        bns:   batchnorm
               relu
    }
           concat
           add shortcut
}
""" + NET.format(extra="").replace("block    basic", "block    parted").replace(
        "shortcut A", "shortcut B"
    )
    module, analysis, out = torch_module(tmp_path, write(tmp_path, text), "parted")
    code = (out / "model.py").read_text()
    assert "nn.ModuleList" in code and "for i, part in enumerate(" in code
    model = module.build_model().eval()
    keys = [k for k in model.state_dict() if k.startswith("layer1.0.")]
    assert "layer1.0.convs.1.weight" in keys and "layer1.0.bns.0.running_mean" in keys
    block = model.layer1[0]
    assert [c.dilation for c in block.convs] == [(1, 1), (2, 2)]
    assert [c.stride for c in model.layer2[0].convs] == [(2, 2), (2, 2)]
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        a, b = x[:, :8], x[:, 8:]
        expected = torch.cat([torch.relu(block.bns[0](block.convs[0](a))),
                              torch.relu(block.bns[1](block.convs[1](b)))], 1) + x  # fmt: skip
        assert torch.allclose(block(x), expected, atol=1e-6)
    assert sum(p.numel() for p in model.parameters()) == analysis.params


# --- mistakes ---------------------------------------------------------------------------------


def _located(tmp_path, body: str, message: str) -> None:
    shortcut = "    shortcut B\n" if "add shortcut" in body else ""
    text = f"""block b(planes, stride = 1) {{
{body}
}}
""" + NET.format(extra="").replace("block    basic", "block    b").replace(
        "    shortcut A\n", shortcut
    )
    report = check(write(tmp_path, text))
    rendered = report.render()
    assert message in rendered, rendered
    assert "Traceback" not in rendered and all(d.span for d in report.diagnostics), rendered


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("    split 3\n    concat\n    add shortcut", "16 channels do not split into 3 parts"),
        ("    split 2\n    softmax depth\n    concat",
         "softmax's axis must be one of: channels, positions, parts"),
        ("    split 2\n    c: conv 3x3 planes\n    concat",
         "`conv` reads a value of one part, and this one is split into 2 parts"),
        ("    split 2\n    add shortcut", "`add shortcut` reads a value split into 2 parts"),
        ("    split 2\n    split 2\n    concat", "the value is already split into 2 parts"),
        ("    concat", "`concat` reads a split value, and this one has no parts"),
        ("    sum parts", "`sum parts` reads a split value, and this one has no parts"),
        ("    multiply feats", "no value is kept as `feats` here"),
        ("    keep x\n    c: conv 3x3 planes * 2\n    add x",
         "`add x` combines 32x32x32 with `x` (16x32x32)"),
        ("    each i {\n        c: conv 3x3 planes\n    }", "`each` runs on the parts of a split"),
        ("    split 2\n    each i {\n        c: conv 3x3 planes * (i + 1)\n    }\n    concat",
         "the parts of `each` come out unlike (part 0: 16x32x32, part 1: 32x32x32)"),
        ("    split 2\n    each i {\n        add shortcut\n    }\n    concat",
         "`add shortcut` belongs in the block's body, not inside `each`"),
        ("    keep planes", "`planes` is already defined here"),
        ("    split 2", "block `b` ends with a value split into 2 parts"),
    ],
)  # fmt: skip
def test_dataflow_mistakes_are_located(tmp_path, body, message):
    _located(tmp_path, body, message)


# --- the docs' examples ---------------------------------------------------------------------

DOCS = Path(__file__).resolve().parent.parent / "docs" / "language.md"


def test_the_docs_global_context_block_computes_gcnets_context(tmp_path):
    import re

    block = re.search(r"```res\n(block context_block.*?)```", DOCS.read_text(), re.S)[1]
    text = (
        block
        + """
block gc_basic(planes, stride = 1) extends basic {
    after bn2 {
        gc: context_block
    }
}
"""
        + NET.format(extra="")
        .replace("block    basic", "block    gc_basic")
        .replace("shortcut A", "shortcut B")
    )
    module, analysis, _ = torch_module(tmp_path, write(tmp_path, text), "gcdocs")
    torch.manual_seed(0)
    model = module.build_model().eval()
    gc = model.layer1[0].gc
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        weights = gc.conv_attn(x).flatten(2).softmax(-1)  # [2, 1, 64]
        context = torch.einsum("ncp,nkp->nc", x.flatten(2), weights)[..., None, None]
        expected = x + gc.fc2(torch.relu(gc.fc1(context)))
        assert torch.allclose(gc(x), expected, atol=1e-5)
    assert sum(p.numel() for p in model.parameters()) == analysis.params


def test_the_docs_show_res2nets_generated_loop(tmp_path):
    import re

    shown = re.search(r"```python\n(        parts = \[\].*?)```", DOCS.read_text(), re.S)[1]
    _, _, out = torch_module(tmp_path, "specs/timm/res2net50_26w_4s.res", "r2docs")
    assert shown in (out / "model.py").read_text()


def test_the_global_context_block_is_timms(tmp_path):
    """The prelude's `global_context` (with `conv_mlp` and its LayerNorm) is timm's GlobalContext
    with fuse_add, key for key and output for output, in PyTorch and in JAX."""
    timm = pytest.importorskip("timm")
    from timm.layers import GlobalContext

    text = """block gc_basic(planes, stride = 1) extends basic {
    after bn2 {
        attn: global_context
    }
}
""" + NET.format(extra="").replace("block    basic", "block    gc_basic").replace(
        "shortcut A", "shortcut B"
    )
    module, analysis, out = torch_module(tmp_path, write(tmp_path, text), "gctimm")
    assert timm is not None
    torch.manual_seed(0)
    model = module.build_model().eval()
    reference = GlobalContext(32, fuse_add=True, fuse_scale=False).eval()
    with torch.no_grad():
        for p in reference.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
    ours = model.layer2[0].attn
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(2, 32, 6, 5)
    with torch.no_grad():
        assert torch.allclose(ours(x), reference(x), atol=1e-5)
    assert sum(p.numel() for p in model.parameters()) == analysis.params
    assert "class LayerNorm2d(nn.LayerNorm)" in (out / "model.py").read_text()


def test_a_layer_named_norm_is_refused_where_the_jax_block_has_its_norm(tmp_path):
    _located(tmp_path, "    c: conv 3x3 planes\n    norm: layernorm\n    add shortcut",
             "block `b` names a layer `norm`")  # fmt: skip


def test_an_if_on_the_blocks_place_in_its_stage(tmp_path):
    """A block with a parameter `index` is given its place in its stage (0 for the first)."""
    from tests.test_jax_model import EXTRA_SPECS

    module, analysis, out = torch_module(
        tmp_path, write(tmp_path, EXTRA_SPECS["numbered"]), "numbered"
    )
    model = module.build_model().eval()
    assert [b.extra is None for b in model.layer1] == [False, True, True]
    assert 'options["index"] = i' in (out / "model.py").read_text()
    assert sum(p.numel() for p in model.parameters()) == analysis.params
    x = torch.randn(2, 8, 6, 6)
    with torch.no_grad():
        second = model.layer1[1]
        expected = torch.nn.functional.gelu(torch.relu(second.bn1(second.conv1(x)))) + x
        assert torch.allclose(second(x), expected, atol=1e-6)


def test_index_is_the_stages_to_give(tmp_path):
    text = """block m(planes, stride = 1, index = 0) {
    c: conv 3x3 planes, stride stride
    add shortcut
}
""" + NET.format(extra="").replace("block    basic", "block    m, index 2").replace(
        "shortcut A", "shortcut B"
    )
    rendered = check(write(tmp_path, text)).render()
    assert "`index` of a block is set by the stage" in rendered, rendered
