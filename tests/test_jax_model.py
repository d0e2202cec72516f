"""The JAX backend's model: every spec builds with the analysis's parameter count and stage shapes,
and gives the PyTorch package's logits once its weights go through `from_torch`; option A by hand,
ResNet-D on odd sizes, the constructs no spec in specs/ combines, initialisation, training-mode BN,
determinism, imports, and conversion errors.

The library's networks are compared at two blocks a stage (every block class, repeated less),
compiled with jax.jit: the many small operations of a published network (Res2Net's chain, split
attention) are slow op by op (res2net50_26w_4s: 10 s against 3.4 s compiled). The long lane compares
them at their full depths op by op: compiling a deep network costs far more than it saves for one
call on a CPU (measured: resnet152 8 s compiled against 1 s op by op at 64x64, resnet1202 12 minutes
against 9 s).
"""

from __future__ import annotations

import ast
import importlib.util
import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from resdsl.analysis import analyse
from resdsl.compile import build_files, compile_spec
from resdsl.diagnostics import Report
from resdsl.frontend import load_spec
from tests.helpers import ROOT, SPECS

jax = pytest.importorskip("jax")
nn = pytest.importorskip("flax.linen")
traverse_util = pytest.importorskip("flax.traverse_util")
torch = pytest.importorskip("torch")
jnp = jax.numpy

TOLERANCE = 1e-4  # max abs logit difference, float32 on the CPU
TEST_SIZE = 64  # ImageNet-size networks are compared at 64x64: they end in a global pool

# Constructs that no spec in specs/ combines, at odd input sizes.
EXTRA_SPECS = {
    # every shortcut option, a plain stage, grouped basic blocks, BN settings, dropout
    "mixed_post": """
network mixed_post {
    input    3x33x31
    classes  7
    stem     imagenet, width 16
    block    basic, groups 2
    shortcut B
    batchnorm momentum 0.03, eps 1e-3
    head     dropout 0.3
    stage: 1 x 16, shortcut A
    stage: 2 x 32, stride 2, shortcut A
    stage: 1 x 32, shortcut C
    stage: 2 x 48, stride 2, shortcut D
    stage: 1 x 64, stride 2, shortcut none
    stage: 2 x 64
}
""",
    # pre-activation bottlenecks with option A beside projections, deep stem, custom widths
    "mixed_pre": """
network mixed_pre {
    input    3x37x29
    classes  5
    stem     deep, width 32
    block    preact_bottleneck, expansion 2, groups 2, width_per_group 32, stride_at 1x1
    shortcut A
    batchnorm momentum 0.25, eps 1e-4
    stage: 2 x 16
    stage: 2 x 24, stride 2, shortcut B
    stage: 1 x 24, shortcut C
    stage: 2 x 32, stride 2, shortcut D
    stage: 1 x 40, stride 2
    stage: 1 x 40, shortcut none
}
""",
    # pre-activation ResNet-D (bare projections), a stride of 3, one channel, fan_out
    "preact_d": """
network preact_d {
    input    1x15x17
    classes  3
    stem     cifar, width 8
    block    preact_basic
    shortcut D
    init     kaiming_normal fan_out
    stage: 1 x 8
    stage: 2 x 16, stride 2
    stage: 1 x 24, stride 3
}
""",
    # definitions in the spec: a stem with GELU and SiLU, a 3x3 projection shortcut, an SE block,
    # a dilated stage, dropout and stochastic depth (off, or scaled, in evaluation)
    "defined": """
stem two_convs(width = 16) {
    conv1: conv 3x3 width // 2, stride 2
    bn1:   batchnorm
           gelu
    conv2: conv 3x3 width
    bn2:   batchnorm
           silu
    pool:  avg_pool 3x3, stride 2, padding 1
}

shortcut wide(outplanes, stride) {
    if stride != 1 or inplanes != outplanes {
        conv 3x3 outplanes, stride stride
        batchnorm
    }
}

block se_basic(planes, stride = 1, reduction = 4) extends basic {
    after bn2 {
        se: squeeze_excite, reduction reduction
    }
}

network defined {
    input     3x35x33
    classes   6
    stem      two_convs
    block     se_basic, dropout 0.2, drop_mode survival
    shortcut  wide
    drop_path 0.3
    stage: 2 x 16
    stage: 2 x 32, stride 2
    stage: 2 x 64, dilation 2
    stage: 1 x 64, block bottleneck, expansion 1, shortcut B
}
""",
    # global context (LayerNorm, softmax over positions, add input) after a selective kernel
    # block, Res2Net's chain in a GroupNorm network: the dataflow constructs at odd sizes
    "dataflow": """
block gc_sk(planes, stride = 1) extends sk_basic {
    after conv2 {
        attn: global_context, rd_ratio 0.25
    }
}

network dataflow {
    input    3x29x27
    classes  5
    stem     cifar, width 16
    block    gc_sk
    shortcut B
    stage: 2 x 16
    stage: 2 x 32, stride 2
    stage: 2 x 16, stride 2, block bottle2neck, scale 4, base_width 32
}
""",
    # an `if` on the block's place in its stage (`index`), chosen in forward
    "numbered": """
block marked(planes, stride = 1, index = 0) {
    conv1: conv 3x3 planes, stride stride
    bn1:   batchnorm
           relu
    if index == 0 {
        extra: conv 1x1 planes
    } else {
        gelu
    }
           add shortcut
}

network numbered {
    input    3x19x21
    classes  4
    stem     cifar, width 8
    block    marked
    shortcut B
    stage: 3 x 8
    stage: 2 x 16, stride 2
}
""",
    # small enough to initialise for real
    "tiny_init": """
network tiny_init {
    input    3x8x8
    classes  10
    stem     cifar, width 16
    block    basic
    shortcut B
    init     kaiming_normal fan_out, zero_init_residual
    stage: 2 x 16
    stage: 1 x 32, stride 2
}
""",
}


def load_package(directory: Path, name: str):
    """The generated directory as a package (weights.py imports .model)."""
    spec = importlib.util.spec_from_file_location(
        name, directory / "__init__.py", submodule_search_locations=[str(directory)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def load_module(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """spec path or EXTRA_SPECS name -> (JAX package, PyTorch model module, analysis)."""
    root = tmp_path_factory.mktemp("jax")
    cache = {}

    def get(spec_path: str, shallow: bool = False):
        if (spec_path, shallow) not in cache:
            if spec_path in EXTRA_SPECS:
                path = root / f"{spec_path}.res"
                path.write_text(EXTRA_SPECS[spec_path])
                spec, analysis = load_spec(path)
            else:
                spec, analysis = load_spec(spec_path)
            if shallow:
                spec, analysis = two_blocks_a_stage(spec)
            tag = spec_path.replace("/", "_").removesuffix(".res") + ("_shallow" if shallow else "")
            compile_spec(spec, analysis, backend="jax", output=root / f"{tag}_jax")
            # the PyTorch reference needs only its model.py
            model_only = spec.model_copy(update={"train": None})
            compile_spec(model_only, analysis, backend="torch", output=root / f"{tag}_torch")
            jax_package = load_package(root / f"{tag}_jax", f"resdsl_jax_{tag}")
            torch_module = load_module(root / f"{tag}_torch" / "model.py", f"resdsl_torch_{tag}")
            cache[spec_path, shallow] = (jax_package, torch_module, analysis)
        return cache[spec_path, shallow]

    return get


def two_blocks_a_stage(spec):
    """`spec` with each stage cut to its first two blocks (the first, which may change the width
    and the resolution, and one of the rest), and its analysis: the same block classes and layers,
    repeated less."""
    net = spec.network
    stages = [stage.model_copy(update={"blocks": min(stage.blocks, 2)}) for stage in net.stages]
    spec = spec.model_copy(update={"network": net.model_copy(update={"stages": stages})})
    report = Report()
    analysis = analyse(spec, report)
    assert analysis is not None, report
    return spec, analysis


def randomised_torch_model(module, channels: int, height: int, width: int, seed: int = 0):
    """The PyTorch package's network with random BN parameters and running statistics."""
    torch.manual_seed(seed)
    return randomise_batchnorm(module.build_model(), channels, height, width, seed)


def randomise_batchnorm(model, channels: int, height: int, width: int, seed: int = 0):
    """`model` with random BN affine parameters and running statistics (and random GroupNorm
    affine parameters), in eval mode.

    The statistics are those of the network's own activations (one batch at momentum 1),
    perturbed, and the variances raised by 0.5: purely random statistics make deep networks'
    logits explode, and near-zero variances amplify float32 rounding until PyTorch alone differs
    from float64 by 1e-3.
    """
    generator = torch.Generator().manual_seed(seed + 1)

    def uniform(like, low, high):
        return torch.empty_like(like).uniform_(low, high, generator=generator)

    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for gn in (m for m in model.modules() if isinstance(m, torch.nn.GroupNorm)):
            gn.weight.copy_(uniform(gn.weight, 0.5, 1.5))
            gn.bias.copy_(uniform(gn.bias, -0.2, 0.2))
        momenta = [bn.momentum for bn in norms]
        for bn in norms:
            bn.weight.copy_(uniform(bn.weight, 0.5, 1.5))
            bn.bias.copy_(uniform(bn.bias, -0.2, 0.2))
            bn.momentum = 1.0
        model.train()
        model(torch.randn(4, channels, height, width, generator=generator))
        for bn, momentum in zip(norms, momenta):
            bn.momentum = momentum
            bn.running_mean.add_(uniform(bn.running_mean, -0.1, 0.1))
            bn.running_var.mul_(uniform(bn.running_var, 0.8, 1.25)).add_(0.5)
    return model.eval()


def state_dict_arrays(model) -> dict[str, np.ndarray]:
    return {name: tensor.numpy() for name, tensor in model.state_dict().items()}


def nhwc(images) -> jax.Array:
    return jnp.asarray(images.numpy().transpose(0, 2, 3, 1))


def max_logit_difference(package, torch_model, images, compiled: bool = False) -> float:
    with torch.no_grad():
        expected = torch_model(images).numpy()
    variables = package.from_torch(state_dict_arrays(torch_model))
    logits = jax.jit(package.logits) if compiled else package.logits
    got = np.asarray(logits(variables, nhwc(images)))
    assert got.shape == expected.shape
    return float(np.abs(got - expected).max())


def stage_shapes(package, analysis, variables) -> list[tuple[int, ...]]:
    """NHWC shapes after each stage at the spec's input size, computed abstractly."""
    net = analysis.network
    last = [f"{stage.attr.replace('.', '_')}_{len(stage.blocks) - 1}"  # layer4_2, stages_3_2
            for stage in analysis.lowered.stages]  # fmt: skip

    def run(variables, images):
        _, state = package.build_model().apply(
            variables,
            images,
            capture_intermediates=lambda module, _: module.name in last,
            mutable=["intermediates"],
        )
        return state["intermediates"]

    channels, height, width = net.input
    images = jax.ShapeDtypeStruct((1, height, width, channels), jnp.float32)
    captured = jax.eval_shape(run, variables, images)
    return [captured[name]["__call__"][0].shape for name in last]


def check_network(
    compiled, spec_path: str, size: int | None = None, batch: int = 2, shallow: bool = False
) -> None:
    package, torch_module, analysis = compiled(spec_path, shallow)
    net = analysis.network
    variables = jax.eval_shape(package.init_variables)
    bn = "batchnorm" in analysis.lowered.kinds  # a GroupNorm network keeps no statistics
    assert set(variables) == ({"params", "batch_stats"} if bn else {"params"})
    assert sum(leaf.size for leaf in jax.tree_util.tree_leaves(variables["params"])) == (
        analysis.params
    )
    assert stage_shapes(package, analysis, variables) == [
        (1, part.out[1], part.out[2], part.out[0]) for part in analysis.stages
    ]
    channels, height, width = net.input
    if size is not None:
        height, width = min(height, size), min(width, size)
    model = randomised_torch_model(torch_module, channels, height, width)
    images = torch.randn(batch, channels, height, width, generator=torch.Generator().manual_seed(2))
    assert max_logit_difference(package, model, images, compiled=shallow) <= TOLERANCE


def network_form(spec) -> str:
    """A spec's network but for its name and the number of blocks of each stage."""
    net = spec.network
    stages = tuple(stage.model_copy(update={"blocks": 1}) for stage in net.stages)
    return net.model_copy(update={"name": "n", "stages": stages}).model_dump_json()


def _checked() -> dict[str, str]:
    """Each library spec -> the spec whose network is checked for it: of the specs whose networks
    differ only in their names and depths (ResNet-18, -34 and their torchvision twins; the CIFAR
    nets of 20 to 1202 layers; a network under another train section), the one with the fewest
    parameters. The generated classes are the same; only their repetition differs."""
    forms: dict[str, list[str]] = {}
    params = {}
    for spec_path in SPECS:
        spec, analysis = load_spec(spec_path)
        forms.setdefault(network_form(spec), []).append(spec_path)
        params[spec_path] = analysis.params

    def smallest(spec: str) -> tuple:  # a plain name first among equals: resnet50, not _v2
        return params[spec], "_" in spec.rsplit("/", 1)[-1], spec

    return {spec: min(group, key=smallest) for group in forms.values() for spec in group}


CHECKED = _checked()


@pytest.mark.parametrize("spec_path", sorted(set(CHECKED.values())))
def test_every_spec_counts_and_matches_torch(compiled, spec_path):
    """At two blocks a stage: every block class and layer of the spec, at a fraction of the cost
    of the deep networks (`make test-long` compares them at their full depths, below)."""
    check_network(compiled, spec_path, size=TEST_SIZE, shallow=True)


@pytest.mark.long
@pytest.mark.parametrize("spec_path", sorted(set(CHECKED.values())))
def test_every_spec_at_its_full_depth_counts_and_matches_torch(compiled, spec_path):
    check_network(compiled, spec_path, size=TEST_SIZE)


def test_the_checked_specs_stand_for_the_whole_library():
    assert set(CHECKED) == set(SPECS)
    assert CHECKED["specs/cifar/resnet1202.res"] == "specs/cifar/resnet20.res"
    assert CHECKED["specs/torchvision/resnet50_v2.res"] == "specs/torchvision/resnet50.res"
    assert CHECKED["specs/torchvision/resnet152.res"] == "specs/torchvision/resnet50.res"
    assert CHECKED["specs/timm/resnet50_a2.res"] == "specs/timm/resnet50_a2.res"  # drop path
    assert len(set(CHECKED.values())) < len(SPECS) * 2 // 3


@pytest.mark.parametrize(
    "name", ["mixed_post", "mixed_pre", "preact_d", "defined", "dataflow", "numbered"]
)
def test_constructs_beyond_the_spec_library_match_torch(compiled, name):
    check_network(compiled, name)


def test_drop_path_matches_torch_in_both_modes(compiled):
    package, torch_module, _ = compiled("defined")
    for survival in (False, True):
        ones = jnp.ones((4000, 1, 1, 1))
        layer = package.model.DropPath(0.25, survival=survival, deterministic=False)
        out = np.asarray(layer.apply({}, ones, rngs={"dropout": jax.random.key(0)})).ravel()
        kept = 1.0 if survival else 1 / 0.75
        assert np.all((out == 0) | np.isclose(out, kept))
        assert 800 < int((out == 0).sum()) < 1200
        evaluated = package.model.DropPath(0.25, survival=survival).apply({}, ones)
        reference = torch_module.DropPath(0.25, survival=survival).eval()(torch.ones(4, 1, 1, 1))
        assert float(evaluated[0, 0, 0, 0]) == float(reference[0, 0, 0, 0])


@pytest.mark.parametrize("name", ["resnet18", "resnext50_32x4d"])
def test_torchvision_state_dict_converts_directly(compiled, name):
    """torchvision's names are the PyTorch package's: its weights reach JAX through from_torch."""
    torchvision = pytest.importorskip("torchvision")
    package, _, _ = compiled(f"specs/torchvision/{name}.res")
    torch.manual_seed(0)
    reference = randomise_batchnorm(getattr(torchvision.models, name)(), 3, 64, 64)
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(7))
    assert max_logit_difference(package, reference, images) <= TOLERANCE


def test_resnet_d_on_odd_sizes(compiled):
    package, torch_module, _ = compiled("specs/variants/resnet50_d.res")
    model = randomised_torch_model(torch_module, 3, 45, 39)
    images = torch.randn(2, 3, 45, 39, generator=torch.Generator().manual_seed(3))
    assert max_logit_difference(package, model, images) <= TOLERANCE
    # the pool alone: a window past the edge averages the pixels it covers, as ceil_mode does
    x = torch.randn(2, 3, 7, 5, generator=torch.Generator().manual_seed(4))
    for stride in (2, 3):
        pool = torch.nn.AvgPool2d(stride, stride, ceil_mode=True, count_include_pad=False)
        expected = pool(x).numpy().transpose(0, 2, 3, 1)
        got = np.asarray(package.model.avg_pool(nhwc(x), stride, stride, ceil=True))
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)


def test_randomised_statistics_matter(compiled):
    """The comparison would catch BN statistics that are dropped or misplaced."""
    package, torch_module, _ = compiled("specs/cifar/resnet20.res")
    model = randomised_torch_model(torch_module, 3, 32, 32)
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    variables = package.from_torch(state_dict_arrays(model))
    reference = np.asarray(package.logits(variables, nhwc(images)))
    plain = jax.tree_util.tree_map(jnp.ones_like, variables["batch_stats"])
    other = np.asarray(package.logits({**variables, "batch_stats": plain}, nhwc(images)))
    assert np.abs(other - reference).max() > 100 * TOLERANCE


def test_option_a_by_hand(compiled):
    package, _, _ = compiled("specs/cifar/resnet20.res")
    x = np.arange(2 * 4 * 4, dtype=np.float32).reshape(1, 2, 4, 4).transpose(0, 2, 3, 1)  # NHWC
    out = np.asarray(package.model.zero_pad_shortcut(jnp.asarray(x), 4, 2))
    assert out.shape == (1, 2, 2, 4)
    # identity on the first channels, subsampled by 2 ...
    assert out[0, :, :, 0].tolist() == [[0.0, 2.0], [8.0, 10.0]]
    assert out[0, :, :, 1].tolist() == [[16.0, 18.0], [24.0, 26.0]]
    # ... and zeros on the new ones, at the end of the channel axis
    assert not out[..., 2:].any()


def test_option_a_block_with_a_silent_branch_is_the_padded_identity(compiled):
    package, _, _ = compiled("specs/cifar/resnet20.res")
    norm = partial(nn.BatchNorm, use_running_average=True, momentum=0.9, epsilon=1e-5)
    block = package.model.BasicBlock(32, norm, stride=2)  # 16 -> 32 channels, stride 2
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.uniform(size=(1, 8, 8, 16)), jnp.float32)
    # random variables without jax.random, whose kernels take seconds to compile on a CPU
    shapes = jax.eval_shape(block.init, jax.random.key(1), x)
    variables = jax.tree_util.tree_map(
        lambda leaf: jnp.asarray(rng.uniform(0.5, 1.5, leaf.shape), jnp.float32), shapes
    )
    params = dict(variables["params"])
    params["bn2"] = {"scale": jnp.zeros(32), "bias": jnp.zeros(32)}  # F(x) = 0
    out = block.apply({**variables, "params": params}, x)
    expected = jnp.concatenate([x[:, ::2, ::2, :], jnp.zeros((1, 4, 4, 16))], axis=-1)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(jax.nn.relu(expected)))


def test_init_follows_the_spec(compiled):
    package, _, analysis = compiled("tiny_init")
    variables = package.init_variables(0)
    params, stats = variables["params"], variables["batch_stats"]
    assert sum(leaf.size for leaf in jax.tree_util.tree_leaves(params)) == analysis.params
    # fan_out: 16 in, 32 out, 3x3 -> std sqrt(2 / (9 * 32)), untruncated
    kernel = np.asarray(params["layer2_0"]["conv1"]["kernel"])
    assert kernel.shape == (3, 3, 16, 32)
    assert abs(kernel.std() - (2 / (9 * 32)) ** 0.5) < 4e-3
    assert np.abs(kernel).max() > 2.5 * (2 / (9 * 32)) ** 0.5
    # zero_init_residual: the last BN of each branch starts at 0, the others at 1
    for block in ("layer1_0", "layer1_1", "layer2_0"):
        assert not np.asarray(params[block]["bn2"]["scale"]).any()
        assert (np.asarray(params[block]["bn1"]["scale"]) == 1).all()
    assert (np.asarray(params["layer2_0"]["downsample_1"]["scale"]) == 1).all()
    assert all((np.asarray(s["mean"]) == 0).all() and (np.asarray(s["var"]) == 1).all()
               for s in jax.tree_util.tree_leaves(stats, is_leaf=lambda n: "mean" in n))  # fmt: skip
    # the fc as PyTorch's nn.Linear: U(-1/sqrt(32), 1/sqrt(32)) for the kernel and the bias
    fc = params["fc"]
    assert np.abs(np.asarray(fc["kernel"])).max() <= 32**-0.5 and np.asarray(fc["bias"]).any()
    # a seed gives the same variables, another seed others
    again = package.init_variables(0)
    assert np.array_equal(kernel, np.asarray(again["params"]["layer2_0"]["conv1"]["kernel"]))
    other = package.init_variables(1)
    assert not np.array_equal(kernel, np.asarray(other["params"]["layer2_0"]["conv1"]["kernel"]))


def test_training_mode_batchnorm_follows_torch(compiled):
    """Batch statistics normalise in training mode; the running averages move by PyTorch's
    momentum (0.25 in the spec, 0.75 in Flax's convention), the variance's with the biased batch
    variance where PyTorch uses the unbiased one."""
    package, torch_module, _ = compiled("mixed_pre")
    model = randomised_torch_model(torch_module, 3, 37, 29)
    before = package.from_torch(state_dict_arrays(model))
    images = torch.randn(4, 3, 37, 29, generator=torch.Generator().manual_seed(6))
    model.train()
    with torch.no_grad():
        expected = model(images).numpy()
    got, updated = package.build_model().apply(
        before, nhwc(images), train=True, mutable=["batch_stats"]
    )
    assert np.abs(np.asarray(got) - expected).max() <= TOLERANCE
    ours = traverse_util.flatten_dict(updated["batch_stats"])
    theirs = traverse_util.flatten_dict(package.from_torch(state_dict_arrays(model))["batch_stats"])
    assert ours.keys() == theirs.keys()
    assert max(np.abs(ours[k] - theirs[k]).max() for k in ours if k[-1] == "mean") <= 1e-5
    # the stem's first BN sees n = 4 x 19 x 15 values per channel
    m, n, key = 0.25, 4 * 19 * 15, ("conv1_1", "var")
    old = np.asarray(traverse_util.flatten_dict(before["batch_stats"])[key])
    unbiased = (np.asarray(theirs[key]) - (1 - m) * old) / m
    np.testing.assert_allclose(ours[key], (1 - m) * old + m * unbiased * (n - 1) / n, rtol=1e-5)


def test_from_torch_names_missing_and_unexpected_keys(compiled):
    package, torch_module, _ = compiled("specs/cifar/resnet20.res")
    arrays = state_dict_arrays(torch_module.build_model())
    assert "layer1.0.bn1.num_batches_tracked" in arrays  # ignored
    del arrays["layer1.0.bn1.running_var"]
    arrays["layer1.0.extra.weight"] = np.zeros(3, np.float32)
    with pytest.raises(KeyError) as error:
        package.from_torch(arrays)
    assert error.value.missing == ["layer1.0.bn1.running_var"]
    assert error.value.unexpected == ["layer1.0.extra.weight"]
    message = str(error.value)
    assert "missing: layer1.0.bn1.running_var" in message
    assert "unexpected: layer1.0.extra.weight" in message


def test_from_torch_copies(compiled):
    package, torch_module, _ = compiled("specs/cifar/resnet20.res")
    model = torch_module.build_model()
    variables = package.from_torch(state_dict_arrays(model))
    with torch.no_grad():
        model.bn1.running_mean.fill_(7.0)
        model.fc.bias.fill_(7.0)
    assert not (np.asarray(variables["batch_stats"]["bn1"]["mean"]) == 7.0).any()
    assert not (np.asarray(variables["params"]["fc"]["bias"]) == 7.0).any()


def test_from_torch_checks_shapes(compiled):
    package, torch_module, _ = compiled("specs/cifar/resnet20.res")
    arrays = state_dict_arrays(torch_module.build_model())
    arrays["fc.weight"] = np.zeros((10, 32), np.float32)
    with pytest.raises(ValueError, match=r"fc\.weight: \(32, 10\) in Flax's layout, expected"):
        package.from_torch(arrays)


def test_grouped_convolutions_convert(compiled):
    """OIHW with I = in/groups becomes HWIO with the same I: torchvision's ResNeXt layout."""
    package, torch_module, _ = compiled("specs/torchvision/resnext50_32x4d.res")
    model = torch_module.build_model()
    variables = package.from_torch(state_dict_arrays(model))
    weight = model.layer1[0].conv2.weight.detach().numpy()  # (128, 4, 3, 3)
    kernel = np.asarray(variables["params"]["layer1_0"]["conv2"]["kernel"])
    assert kernel.shape == (3, 3, 4, 128)
    np.testing.assert_array_equal(kernel, weight.transpose(2, 3, 1, 0))


# --- the generated files -----------------------------------------------------------------------

MODEL_IMPORTS = {"collections.abc", "functools", "typing", "jax", "jax.numpy", "flax"}
WEIGHTS_IMPORTS = MODEL_IMPORTS | {"re", "numpy", "model", ".model"}


def imported(source: str) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            names.add("." * node.level + (node.module or ""))
    return names


def jax_files(spec_path: str) -> dict[str, str]:
    spec, analysis = load_spec(spec_path)
    return build_files(spec, analysis, backend="jax")


@pytest.mark.parametrize(
    "spec_path",
    ["specs/cifar/resnet20.res", "specs/variants/resnet50_d.res",
     "specs/torchvision/resnext50_32x4d.res", "specs/variants/preact_resnet164.res",
     "specs/fashion-mnist/resnet20_dropout.res"],
)  # fmt: skip
def test_generated_files_import_only_jax_flax_numpy(spec_path):
    files = jax_files(spec_path)
    assert {"README.md", "__init__.py", "model.py", "weights.py"} <= set(files)
    assert imported(files["model.py"]) <= MODEL_IMPORTS, imported(files["model.py"])
    assert imported(files["weights.py"]) <= WEIGHTS_IMPORTS, imported(files["weights.py"])
    for name, text in files.items():
        if name.endswith(".py"):
            assert text.startswith("# Generated by resdsl"), name
            assert not any(m.split(".")[0] in ("torch", "resdsl") for m in imported(text)), name


def test_generated_model_holds_only_what_the_spec_uses():
    resnet20 = jax_files("specs/cifar/resnet20.res")["model.py"]
    for absent in ("conv1x1", "avg_pool", "groups", "Dropout", "max_pool", "zeros_init",
                   "shortcut:", "Bottleneck", "bn_final"):  # fmt: skip
        assert absent not in resnet20, absent
    assert "zero_pad_shortcut" in resnet20
    resnet50_d = jax_files("specs/variants/resnet50_d.res")["model.py"]
    assert "zero_pad_shortcut" not in resnet50_d and "groups" not in resnet50_d
    assert "avg_pool(" in resnet50_d and "zeros_init" in resnet50_d
    dropout = jax_files("specs/fashion-mnist/resnet20_dropout.res")["model.py"]
    assert "nn.Dropout(0.2, deterministic=not train)" in dropout
    assert 'padding="SAME"' not in resnet20 + resnet50_d


def test_compile_is_deterministic_across_hash_seeds(tmp_path):
    outputs = []
    out = tmp_path / "pkg"
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        subprocess.run(
            [sys.executable, "-m", "resdsl.cli", "compile", "specs/variants/resnet50_d.res",
             "--backend", "jax", "-o", str(out)],
            cwd=ROOT, env=env, check=True, capture_output=True,
        )  # fmt: skip
        outputs.append({p.name: p.read_bytes() for p in sorted(out.iterdir())})
    assert outputs[0] == outputs[1]
    assert {"__init__.py", "model.py", "weights.py", "README.md"} <= set(outputs[0])
