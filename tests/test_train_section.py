"""The train section beyond the paper's recipes: the new statements as IR, the library recipes,
overrides statement by statement, a train section that builds on its base spec's, drop path
from a recipe, and where a problem inside a recipe points."""

from __future__ import annotations

import textwrap

import pytest

from resdsl import ir
from resdsl.diagnostics import SpecError
from resdsl.frontend import load_spec
from tests.helpers import ROOT

RECIPE_SPECS = {
    "torchvision_v2": "specs/torchvision/resnet50_v2.res",
    "rsb_a2": "specs/timm/resnet50_a2.res",
    "rsb_a3": "specs/timm/resnet50_a3.res",
    "bag_of_tricks": "specs/torchvision/resnet50_bag_of_tricks.res",
    "fast_cifar": "specs/cifar/resnet20_fast.res",
}


def write(tmp_path, name: str, text: str):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_torchvision_v2_is_the_recipe_of_the_imagenet1k_v2_weights():
    train = load_spec("specs/torchvision/resnet50_v2.res")[0].train
    assert train.recipe == "torchvision_v2"
    assert train.optimizer == ir.SGD(lr=0.5, momentum=0.9, weight_decay=2e-5, norm_weight_decay=0)
    assert (train.batch, train.repeats, train.length) == (
        1024,
        4,
        ir.Length(value=600, unit="epochs"),
    )
    assert train.schedule == ir.Cosine(min_lr=0, per="epoch")
    assert train.warmup == ir.WarmupLinear(start_factor=0.01, length=5)
    assert train.loss == ir.CrossEntropy(label_smoothing=0.1)
    assert train.mix == ir.Mix(mixup=0.2, cutmix=1.0)
    assert train.ema == ir.EMA(decay=0.99998, every=32, adjust=True)
    assert [s.op for s in train.augment] == [
        "random_resized_crop", "hflip", "trivial_augment_wide", "random_erasing"
    ]  # fmt: skip
    assert train.augment[0].size == 176 and train.augment[-1].p == 0.1
    assert train.eval == (ir.SingleView(resize=232),)  # then the 224 centre crop
    assert train.preprocess == (ir.Normalize(source="imagenet"),)


def test_rsb_recipes_follow_timm():
    a2 = load_spec("specs/timm/resnet50_a2.res")[0]
    train = a2.train
    assert train.optimizer == ir.Lamb(
        lr=5e-3, weight_decay=0.02, norm_weight_decay=0, bias_weight_decay=0
    )
    assert train.optimizer.max_grad_norm == 1.0 and train.optimizer.eps == 1e-6  # timm's
    assert train.loss == ir.BinaryCrossEntropy(target_threshold=0.2)
    assert train.mix == ir.Mix(mixup=0.1, cutmix=1.0) and train.repeats == 3
    assert train.precision == "bf16"
    assert train.augment[-1] == ir.RandAugment(ops=2, magnitude=7, magnitude_std=0.5,
                                               interpolation="bicubic")  # fmt: skip
    assert train.eval == (ir.SingleView(resize=235, interpolation="bicubic"),)  # 224 / 0.95
    # the recipe's drop path, on the network, with timm's rule: 0 for the first block
    assert (a2.network.drop_path, a2.network.drop_path_rule) == (0.05, "timm")
    rates = [
        layer.args["p"]
        for stage in load_spec("specs/timm/resnet50_a2.res")[1].lowered.stages
        for block in stage.blocks
        for layer in block.layers()
        if layer.kind == "drop_path"
    ]
    assert rates == pytest.approx([0.05 * k / 15 for k in range(1, 16)])  # timm: k of 0..15
    a3 = load_spec("specs/timm/resnet50_a3.res")[0]
    assert a3.train.augment[0].size == 160 and a3.network.input == (3, 224, 224)
    assert a3.train.repeats == 1 and a3.network.drop_path == 0


@pytest.mark.parametrize("recipe", sorted(RECIPE_SPECS))
def test_every_recipe_has_a_library_spec_and_its_sources_in_comments(recipe):
    spec = load_spec(RECIPE_SPECS[recipe])[0]
    assert spec.train.recipe == recipe
    text = (ROOT / "resdsl" / "recipes" / f"{recipe}.res").read_text()
    assert text.startswith("# ") and text.count("\n#") >= 3


def test_a_train_section_builds_on_its_base_specs(tmp_path):
    spec = write(tmp_path, "mine.res", f"""
        network mine extends "{ROOT}/specs/fashion-mnist/resnet20.res"
        train {{
            optimizer sgd, lr 0.05
        }}
    """)  # fmt: skip
    train = load_spec(spec)[0].train
    assert train.data.kind == "fashion_mnist"  # the base's data line is kept
    assert [s.op for s in train.preprocess] == ["pad_to", "subtract_mean"]
    assert train.optimizer == ir.SGD(lr=0.05)  # momentum and decay from paper_cifar
    assert train.recipe == "paper_cifar"


def test_naming_a_recipe_starts_from_it_and_its_problems_name_the_spec_line(tmp_path):
    spec = write(tmp_path, "mine.res", f"""
        network mine extends "{ROOT}/specs/fashion-mnist/resnet20.res"
        train paper_cifar {{
            optimizer sgd, lr 0.05
        }}
    """)  # fmt: skip
    with pytest.raises(SpecError) as error:
        load_spec(spec)
    (diagnostic,) = error.value.report.diagnostics
    assert diagnostic.span.path.endswith("recipes/paper_cifar.res")  # its `data cifar10` line
    assert f"the recipe `paper_cifar` comes from `train paper_cifar` at {spec}:3" in (
        diagnostic.hint
    )


def test_overriding_a_value_keeps_the_recipes_options(tmp_path):
    spec = write(tmp_path, "net.res", f"""
        network net extends "{ROOT}/specs/torchvision/resnet50.res"
        train torchvision_v2 {{
            batch 256
            loss  cross_entropy
            ema   every 8
        }}
    """)  # fmt: skip
    train = load_spec(spec)[0].train
    assert (train.batch, train.repeats) == (256, 4)
    assert train.loss == ir.CrossEntropy(label_smoothing=0.1)
    assert train.ema == ir.EMA(decay=0.99998, every=8, adjust=True)


def test_drop_path_is_set_once(tmp_path):
    spec = write(tmp_path, "net.res", f"""
        network net extends "{ROOT}/specs/torchvision/resnet50.res" {{
            drop_path 0.1
        }}
        train rsb_a2
    """)  # fmt: skip
    with pytest.raises(SpecError, match="drop path is set twice"):
        load_spec(spec)


def test_the_paper_recipes_read_as_before():
    train = load_spec("specs/cifar/resnet20.res")[0].train
    assert train.optimizer == ir.SGD(lr=0.1, momentum=0.9, weight_decay=1e-4)
    assert train.loss == ir.CrossEntropy() and train.mix is None and train.ema is None
    assert (train.repeats, train.precision, train.warmup) == (1, None, None)


def test_the_docs_quote_the_grammar_and_the_recipes_as_they_are():
    docs = (ROOT / "docs" / "language.md").read_text()
    blocks = docs.split("```")[1::2]
    assert "lark\n" + (ROOT / "resdsl" / "grammar.lark").read_text() in blocks
    quoted = [b for b in blocks if b.startswith("res\n# ")]
    for recipe in ("paper_cifar", "paper_imagenet", "torchvision_v2", "fast_cifar"):
        text = (ROOT / "resdsl" / "recipes" / f"{recipe}.res").read_text()
        assert "res\n" + text in quoted, recipe
