"""The compiler's one interpretation of a definition: what `check` accepts builds, in both
backends, what `summary` counts (the same weights giving the same logits); what it refuses is a
located error. The cases found by trying the language as a researcher and as a hostile user would,
the kinds of layer defined in one place, the backends printing forms only, and the differential
generator (tests/differential.py) over a few hundred random definitions.
"""

from __future__ import annotations

import ast
import re
import time
from pathlib import Path

import pytest

from resdsl.frontend import check, load_spec
from resdsl.layers import KINDS
from tests.differential import Spec, specs, verify
from tests.helpers import ROOT

pytest.importorskip("torch")
pytest.importorskip("jax")

NETWORK = """
network n {
    input    3x16x16
    classes  4
    stem     %s
    block    %s
    shortcut %s
    stage: 1 x %d
    stage: 1 x %d, stride 2
}
"""


def spec_text(definitions: str, block: str = "b", stem: str = "cifar, width 8",
              shortcut: str = "B", widths: tuple[int, int] = (16, 32)) -> str:  # fmt: skip
    return definitions + NETWORK % (stem, block, shortcut, *widths)


def built(tmp_path: Path, text: str, index: int = 0, random_layers: bool = False):
    """Both packages of `text`, checked against the analysis and against each other."""
    result = verify(Spec(text, 1, random_layers), tmp_path, index)
    assert result.outcome == "equal", result.detail
    return load_spec(tmp_path / f"case{index}.res")[1]


def errors(tmp_path: Path, text: str) -> str:
    path = tmp_path / "bad.res"
    path.write_text(text)
    report = check(path)
    rendered = report.render()
    assert report.diagnostics, "accepted"
    assert "internal error" not in rendered and "Traceback" not in rendered, rendered
    assert all(d.span is not None for d in report.diagnostics), rendered
    return rendered


# --- what check accepted, and then built something else or nothing ---------------------------


def test_a_label_named_as_a_generated_name_keeps_both_layers(tmp_path):
    """An unnamed `relu`, then a layer named `relu` of kind `gelu`: two layers, two names."""
    text = spec_text("""
block b(planes, stride = 1) {
    expansion = 1
    conv1: conv 3x3 planes, stride stride
    bn1:   batchnorm
           relu
    relu:  gelu
    conv2: conv 3x3 planes
    bn2:   batchnorm
           add shortcut
           relu
}
""")  # fmt: skip
    built(tmp_path, text)
    model = (tmp_path / "case0_torch" / "model.py").read_text()
    assert "self.relu = nn.GELU()" in model and "self.relu2 = nn.ReLU(inplace=True)" in model
    assert model.count("out = self.relu2(out)") == 2 and model.count("out = self.relu(out)") == 1


def test_a_choice_on_a_computed_value_in_a_block_used_as_a_layer(tmp_path):
    text = spec_text("""
block se(reduction = 16) {
    raw = inplanes // reduction
    rd = raw if raw >= 8 else 8
           global_avg_pool
    fc1:   conv 1x1 rd, bias
           relu
    fc2:   conv 1x1 inplanes, bias
           sigmoid
           multiply
}
block b(planes, stride = 1) extends basic {
    after bn2 {
        se: se, reduction 4
    }
}
""", widths=(16, 64))  # fmt: skip
    analysis = built(tmp_path, text)
    # 16 -> 8 (raised to 8) -> 16, and 64 -> 16 -> 64
    se = (16 * 8 + 8 + 8 * 16 + 16) + (64 * 16 + 16 + 16 * 64 + 64)
    base = load_spec(_write(tmp_path, "base.res", spec_text("", block="basic",
                                                            widths=(16, 64))))[1]  # fmt: skip
    assert analysis.params - base.params == se
    assert "rd = raw if raw >= 8 else 8" in (tmp_path / "case0_torch" / "model.py").read_text()


def test_a_channel_count_computed_through_a_float_is_a_whole_number(tmp_path):
    text = spec_text("""
block se(reduction = 16) {
           global_avg_pool
    fc1:   conv 1x1 (inplanes * 0.0625 + 4) // 8 * 8, bias
           relu
    fc2:   conv 1x1 inplanes, bias
           sigmoid
           multiply
}
block b(planes, stride = 1) extends basic {
    after bn2 {
        se: se
    }
}
""", widths=(64, 128))  # fmt: skip
    analysis = built(tmp_path, text)
    assert isinstance(analysis.params, int)
    assert (
        "int((inplanes * 0.0625 + 4) // 8 * 8)" in (tmp_path / "case0_torch/model.py").read_text()
    )
    whole = text.replace("(inplanes * 0.0625 + 4) // 8 * 8", "inplanes * 0.0625 + 4.5")
    assert "not a whole number" in errors(tmp_path, whole)


def test_a_block_of_a_stage_needs_a_stride_parameter(tmp_path):
    text = spec_text("""
block b(planes) {
    expansion = 1
    c: conv 3x3 planes
    n: batchnorm
       add shortcut
}
""", widths=(16, 16)).replace(", stride 2", "")  # fmt: skip
    assert "has no parameter `stride`, which a stage gives its first block" in errors(
        tmp_path, text
    )


def test_linear_is_a_layer_in_blocks_as_in_the_head(tmp_path):
    text = spec_text("""
block gate(reduction = 4) {
           global_avg_pool
    fc1:   linear inplanes // reduction
           relu
    fc2:   linear inplanes
           sigmoid
           multiply
}
block b(planes, stride = 1) extends basic {
    after bn2 {
        se: gate
    }
}
""")  # fmt: skip
    analysis = built(tmp_path, text)
    base = load_spec(_write(tmp_path, "base.res", spec_text("", block="basic")))[1]
    assert analysis.params - base.params == (16 * 4 + 4 + 4 * 16 + 16) + (32 * 8 + 8 + 8 * 32 + 32)
    assert analysis.head.params == 32 * 4 + 4  # the fc, a `linear` like those
    assert KINDS["linear"].params({}, (32, 1, 1), (4, 1, 1)) == analysis.head.params


def test_the_documented_demo_block_builds_its_squeeze_and_excitation(tmp_path):
    """docs/language.md's `demo` block: choices on a word and on `preact`."""
    text = (ROOT / "docs/language.md").read_text()
    demo = re.search(r"```res\n(# A block written to show the values.*?)```", text, re.S)[1]
    analysis = built(tmp_path, demo)
    assert analysis.params == 44_626
    model = (tmp_path / "case0_torch" / "model.py").read_text()
    assert "nn.SiLU" in model and "SqueezeExciteBlock(planes, reduction=4)" not in model
    assert "self.se = SqueezeExciteBlock(planes)" in model


# --- every independent mistake in one run -----------------------------------------------------


def test_six_independent_mistakes_are_reported_at_once(tmp_path):
    (tmp_path / "base.res").write_text("""
network base {
    input    3x32x32
    classes  10
    stem     cifar
    block    basic
    shortcut A
    stage: 1 x 16
    stage: 1 x 32, stride 2
}
""")
    text = """
block se_basic(planes, stride = 1) extends basic {
    after bn2 {
        se: squeeze_excit
    }
}

network n extends "base.res" {
    block     bottleneck, groupz 32
    drop_path 1.1
    shortcut  Q
    stage: 1 x 64, strid 2
}

train {
    data       synthetic
    optimizer  adamx, lr 0.1
    batch      16
    length     10 iterations
    eval       single_view
}
"""
    rendered = errors(tmp_path, text)
    for message in ("unknown layer `squeeze_excit`", "unknown option `groupz`", "drop_path",
                    "unknown shortcut", "unknown option `strid`", "unknown optimizer"):  # fmt: skip
        assert message in rendered, (message, rendered)


# --- hostile definitions ----------------------------------------------------------------------

AFTER = "block b(planes, stride = 1) extends basic {{\n    after bn2 {{\n        {}\n    }}\n}}\n"
CHAIN = "".join(f"block s{i}() {{\n    k: s{i + 1}\n}}\n" for i in range(199))
TWICE = "block e0() {\n    c: conv 1x1 inplanes\n}\n" + "".join(
    f"block e{i}() {{\n    a: e{i - 1}\n    b: e{i - 1}\n}}\n" for i in range(1, 31)
)
REFUSED = {
    "itself": (AFTER.format("me: b"), "block `b` uses itself (b -> b)"),
    "mutually": (
        "block a() {\n    x1: c\n}\nblock c() {\n    x2: a\n}\n" + AFTER.format("q: a"),
        "block `a` uses itself (a -> c -> a)",
    ),
    "a chain of 200": (
        CHAIN + "block s199() {\n    relu\n}\n" + AFTER.format("q: s0"),
        "nest more than 16 deep",
    ),  # fmt: skip
    "2^30 layers": (TWICE + AFTER.format("q: e30"), "would have more than 200,000 layers"),
    "keyword label": (AFTER.format("class: relu"), "`class` is a Python keyword"),
    "keyword parameter": (
        "block b(planes, stride = 1, lambda = 2) extends basic {\n}\n",
        "`lambda` is a Python keyword; choose another name for this parameter",
    ),
    "keyword value": (
        "block b(planes, stride = 1) extends basic {\n    None = 2\n}\n",
        "`None` is a Python keyword",
    ),  # fmt: skip
    "forward": (AFTER.format("forward: relu"), "an attribute every PyTorch or Flax module has"),
    "training": (AFTER.format("training: relu"), "an attribute every PyTorch or Flax module"),
    "parameters": (AFTER.format("parameters: relu"), "an attribute every PyTorch or Flax"),
    "name": (AFTER.format("name: relu"), "an attribute every PyTorch or Flax module has"),
    "parent": (AFTER.format("parent: relu"), "an attribute every PyTorch or Flax module has"),
    "downsample": (AFTER.format("downsample: relu"), "a name every generated block keeps"),
    "numbered": (AFTER.format("conv_1: relu"), "reads as the number of a layer"),
    "inplanes": (
        "block b(planes, stride = 1, inplanes = 4) extends basic {\n}\n",
        "`inplanes` is given to every definition by the network",
    ),  # fmt: skip
    "two adds": (
        "block b(planes, stride = 1) {\n    c: conv 3x3 planes, stride stride\n    add shortcut\n"
        "    add shortcut\n}\n",
        "a block adds its shortcut once",
    ),
    "two branches": (
        "block b(planes, stride = 1) {\n    n: batchnorm\n    branch\n    branch\n"
        "    c: conv 3x3 planes, stride stride\n    add shortcut\n}\n",
        "a block has one `branch`",
    ),
    "multiply after a strided conv": (
        "block b(planes, stride = 1) {\n    c: conv 3x3 inplanes, stride stride\n    multiply\n"
        "    d: conv 1x1 planes\n    add shortcut\n}\n",
        "`multiply` multiplies the block's input (16x16x16) by 16x8x8",
    ),
    "dilation 1e9": (
        AFTER.format("d: conv 3x3 planes, dilation 1000000000"),
        "dilation must be at most 1024",
    ),  # fmt: skip
    "labels in a shortcut": (
        "shortcut W(outplanes, stride) {\n    p: conv 1x1 outplanes, stride stride\n}\n"
        "block b(planes, stride = 1) extends basic {\n}\n",
        "the layers of a shortcut are named by their number",
    ),
    "after without extends": (
        "block b(planes, stride = 1) {\n    after c {\n        relu\n    }\n}\n",
        "extends none",
    ),  # fmt: skip
}
REFUSED_IN_STEMS = {word: f"stem s(width = 8) {{\n    {word}: conv 3x3 width\n}}\n"
                    for word in ("fc", "layer1", "forward_features", "avgpool")}  # fmt: skip


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_hostile_definitions_are_located_errors(tmp_path, name):
    definitions, message = REFUSED[name]
    start = time.perf_counter()
    rendered = errors(tmp_path, spec_text(definitions, shortcut="W" if "W(" in definitions else
                                          "B"))  # fmt: skip
    assert message in rendered, rendered
    assert time.perf_counter() - start < 5


@pytest.mark.parametrize("word", sorted(REFUSED_IN_STEMS))
def test_a_stem_layer_named_as_the_network_names_its_own_is_refused(tmp_path, word):
    text = spec_text(REFUSED_IN_STEMS[word] + "block b(planes, stride = 1) extends basic {\n}\n",
                     stem="s")  # fmt: skip
    assert "a name the network class keeps for itself" in errors(tmp_path, text)


PYTHON_NAMES = ["forward", "training", "downsample", "self", "nn", "conv3x3", "super", "x", "name",
                "parent", "identity", "out", "norm", "F", "torch"]  # fmt: skip


@pytest.mark.parametrize("word", PYTHON_NAMES)
def test_parameters_and_values_named_as_the_code_names_its_own_build(tmp_path, word):
    """A parameter or a value spelled like a name of the generated code is renamed there (`x_`);
    a layer may take such a name wherever no module attribute has it."""
    parameter = f"""
block b(planes, stride = 1, {word} = 2) extends basic {{
    after bn2 {{
        q: conv 1x1 planes * {word} // 2
    }}
}}
"""
    value = f"""
block b(planes, stride = 1) extends basic {{
    {word} = planes * 2
    after bn2 {{
        q: conv 1x1 {word} // 2
    }}
}}
"""
    built(tmp_path, spec_text(parameter), 0)
    built(tmp_path, spec_text(value), 1)
    if word not in ("forward", "training", "downsample", "name", "parent", "norm"):
        built(tmp_path, spec_text(AFTER.format(f"{word}: relu")), 2)


def test_definitions_printed_as_the_same_class_get_their_own_names(tmp_path):
    text = spec_text(
        "block a_b(planes, stride = 1) extends basic {\n}\n"
        "block a__b(planes, stride = 1) extends bottleneck {\n}\n"
        "block basic_block(planes, stride = 1) extends basic {\n    after bn2 {\n        relu\n"
        "    }\n}\n",
        block="a_b\n    stage: 1 x 16, block a__b\n    stage: 1 x 16, block basic_block\n"
        "    stage: 1 x 64, block basic",
    )
    built(tmp_path, text)
    model = (tmp_path / "case0_torch" / "model.py").read_text()
    names = re.findall(r"^class (\w+)\(nn.Module\)", model, re.M)
    assert len(names) == len(set(names)) == 5, names


def test_a_value_of_a_shortcut_is_defined_where_the_shortcut_is_built(tmp_path):
    text = spec_text("""
shortcut half(outplanes, stride) {
    wide = outplanes * 2
    if stride != 1 or inplanes != outplanes {
        conv 1x1 wide // 2, stride stride
        batchnorm
    }
}
block b(planes, stride = 1) extends basic {
}
""", shortcut="half")  # fmt: skip
    built(tmp_path, text)


def test_reading_is_linear_in_a_chain_of_parameters(tmp_path):
    chain = "".join(f"param p{i} = p{i + 1} + 1\n" for i in range(1000)) + "param p1000 = 1\n"
    start = time.perf_counter()
    spec = _write(tmp_path, "chain.res", chain + spec_text("", block="basic").replace(
        "classes  4", "classes  p990"))  # fmt: skip
    assert load_spec(spec)[0].network.classes == 11
    assert time.perf_counter() - start < 2


# --- one place for each kind, forms only in the backends ---------------------------------------


def test_each_kind_is_printed_by_both_backends():
    from resdsl.backends.jax.model import CALLS
    from resdsl.backends.torch.model import MODULES

    assert set(KINDS) == set(MODULES) == set(CALLS)


def test_the_backends_read_forms_not_syntax():
    for path in (ROOT / "resdsl" / "backends").rglob("*.py"):
        tree = ast.parse(path.read_text())
        imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        imported |= {a.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                     for a in node.names}  # fmt: skip
        assert not any(m and m.endswith(("syntax", "interpret")) for m in imported), path
        if "jax" in path.parts:
            assert not any(m and "torch" in m for m in imported), (path, imported)


# --- the differential generator ---------------------------------------------------------------

CHUNKS, PER_CHUNK = 7, 4  # 28 specs of 7 or 8 definitions each: 200 or so cases
QUICK = 5  # the chunks of `make test`; the long lane runs the rest


@pytest.mark.parametrize(
    "chunk",
    [*range(QUICK), *(pytest.param(c, marks=pytest.mark.long) for c in range(QUICK, CHUNKS))],
)
def test_random_definitions_build_what_summary_counts_in_both_backends(tmp_path, chunk):
    """Training mode is compared for every third network (it doubles the JAX compilation)."""
    generated = list(specs(CHUNKS * PER_CHUNK, seed=2026))[chunk * PER_CHUNK :][:PER_CHUNK]
    outcomes = [verify(spec, tmp_path, i, train=(chunk * PER_CHUNK + i) % 3 == 0).outcome
                for i, spec in enumerate(generated)]  # fmt: skip
    assert outcomes.count("equal") >= PER_CHUNK - 1, outcomes


def test_the_generator_makes_a_few_hundred_cases():
    generated = list(specs(CHUNKS * PER_CHUNK, seed=2026))
    assert sum(spec.definitions for spec in generated) >= 200


def _write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(text)
    return path
