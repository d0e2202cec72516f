"""Random definitions and the networks that use them, made reproducibly from a seed: the
differential tests of the compiler (tests/test_differential.py runs a few hundred definitions,
bench/differential.py thousands).

Each spec defines blocks (grouped and dilated convolutions, kernel sizes as values, lets computed
through floats, choices, max, min and log2, numbered groups, dropout, drop path, GroupNorm
layers, gates that are blocks used as layers (squeeze-and-excitation, or efficient channel
attention's convolution across channels), the dataflow of split attention, selective kernels,
Res2Net's chain and global context (split, each, keep, multiply and add of kept values, sums and
softmaxes over parts and positions, concat), an `if` on the block's stride, branch points,
layers named as the generated code names its own), maybe a stem and a shortcut, and a network whose stages use them with the
prelude's shortcuts (and BN or GroupNorm as its norm). For each, `check` passes or gives located
errors; when it passes, the PyTorch and JAX packages build, count what `summary` counts, and
give the same logits from the same weights.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

# labels the generated code also has names for: a layer's name is the user's, and the code's own
# names step aside (`relu: gelu` beside an unnamed `relu`)
COLLIDING = ["relu", "maxpool", "pool", "avgpool", "dropout", "drop_path", "identity", "out",
             "x", "self_", "conv3x3", "nn", "sigmoid", "gelu"]  # fmt: skip
# parameter and value names the generated code uses for itself: spelled `x_` in the code
PRINTER_WORDS = ["x", "out", "identity", "nn", "self", "norm", "train", "name", "super", "F"]
ACTIVATIONS = ["relu", "gelu", "silu", "sigmoid"]


@dataclass
class Spec:
    text: str
    definitions: int  # the definitions it holds: each is a case
    random_layers: bool  # dropout or drop path: train mode differs between the packages
    notes: list[str] = field(default_factory=list)


class Generator:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.count = 0

    def name(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}{self.count}"

    # --- pieces -------------------------------------------------------------------------------
    def gate(self) -> tuple[str, str]:
        """A squeeze-and-excitation-like block used as a layer, or an efficient channel attention
        one (a 1-D convolution across channels, its kernel from log2 of them): (name, text)."""
        rng = self.rng
        name = self.name("gate")
        if rng.random() < 0.3:
            body = [
                "k = max((log2(inplanes) + 1) // reduction // 2 * 2 + 1, 3)",
                "       global_avg_pool",
                f"{rng.choice(['conv', 'c', 'relu'])}: channel_conv k",
                "       sigmoid",
                "       multiply",
            ]
            return name, f"block {name}(reduction = 2) {{\n" + _lines(body) + "}\n"
        fc = rng.choice(["conv", "linear"])
        first, second = ("conv 1x1 {c}, bias", "conv 1x1 inplanes, bias") if fc == "conv" else (
            "linear {c}", "linear inplanes"
        )  # fmt: skip
        lets = []
        if rng.random() < 0.5:
            lets = ["raw = inplanes // reduction", rng.choice(["rd = raw if raw >= 2 else 2",
                                                                "rd = max(raw, 2)", "rd = min(raw, 6)"])]  # fmt: skip
            channels = "rd"
        else:
            channels = "inplanes // reduction"
        act = rng.choice(ACTIVATIONS[:3])
        body = [
            *lets,
            "       global_avg_pool",
            f"fc1:   {first.format(c=channels)}",
            f"       {act}",
            f"fc2:   {second}",
            "       sigmoid",
            "       multiply",
        ]
        return name, f"block {name}(reduction = {rng.choice([2, 4])}) {{\n" + _lines(body) + "}\n"

    def block(self, preact: bool, gates: list[str], expansion: int) -> tuple[str, str, dict]:
        """A block definition: (name, text, facts about its parameters)."""
        rng = self.rng
        name = self.name("blk")
        params = ["planes", "stride = 1"]
        facts = {"dilation": False, "drop_path": False, "random": False, "options": {},
                 "expansion": expansion}  # fmt: skip
        body: list[str] = [f"expansion = {expansion}"]
        extra = rng.choice(PRINTER_WORDS) if rng.random() < 0.3 else None
        if extra:  # a parameter spelled like one of the code's names
            params.append(f"{extra} = 2")
            facts["options"][extra] = rng.choice([1, 2])
        if rng.random() < 0.4:
            params.append("dilation = 1")
            facts["dilation"] = True
        if rng.random() < 0.4:
            params.append("drop_path = 0")
            params.append(f"drop_mode = {rng.choice(['inverted', 'survival'])}")
            facts["drop_path"] = True
        width = rng.choice(["planes", "planes * 2", "(planes * 0.5 + 4) // 4 * 4",
                            "planes if planes >= 8 else 8"])  # fmt: skip
        w = rng.choice(["w", "w", rng.choice(PRINTER_WORDS)])  # a value named as the code's own
        if w == extra:
            w = "w"
        body.append(f"{w} = {width}")
        labels = iter(_label_stream(rng))
        used: set[str] = set()

        def label(default: str) -> str:
            for candidate in labels:
                if candidate not in used:
                    used.add(candidate)
                    return candidate
            return default

        if preact:
            body += ["bn0:   batchnorm", "       relu"]
        elif rng.random() < 0.2:  # a choice on the network's form, decided per network
            body += ["if preact {", "    relu", "} else {", "    identity", "}"]
            if rng.random() < 0.6:
                body.append("       branch")
        dilation = ", dilation dilation" if facts["dilation"] else ""
        units = rng.randint(1, 3)
        channels_even = False  # the current channels are `w` (even: groups 2 divide them)
        kernels = ["3x3", "1x1"]
        for unit in range(units):
            stride = ", stride stride" if unit == 0 else ""
            kernel = rng.choice(kernels)
            groups = ", groups 2" if channels_even and rng.random() < 0.4 else ""
            extra_dilation = dilation if kernel != "1x1" else ""
            bias = ", bias" if rng.random() < 0.15 else ""
            if kernel == "3x3" and rng.random() < 0.25:  # the kernel size as a value
                body.append(f"{label('c')}: conv {w}, kernel {rng.choice(['3', '1 + 2'])}{stride}"
                            f"{groups}{extra_dilation}{bias}")  # fmt: skip
            else:
                body.append(
                    f"{label('c')}: conv {kernel} {w}{stride}{groups}{extra_dilation}{bias}"
                )
            channels_even = True
            norm = "groupnorm 2" if rng.random() < 0.15 else "batchnorm"
            body.append(f"{label('n')}: {norm}")
            body.append(self._activation(used))
            roll = rng.random()
            if roll < 0.15:
                body.append(f"       dropout {rng.choice([0.1, 0.25])}")
                facts["random"] = True
            elif roll < 0.3:
                pool = rng.choice(["max_pool", "avg_pool", "avg_pool"])
                include = ", count_include_pad" if pool == "avg_pool" and rng.random() < 0.5 else ""
                body.append(f"       {pool} 3x3, stride 1, padding 1{include}")
            elif roll < 0.45:
                group = label("g")
                body.append(
                    f"{group}: {{\n        conv 1x1 {w}\n        batchnorm\n        relu\n    }}"
                )
            if rng.random() < 0.3:  # dataflow: parts, kept values, an `if` on the block
                taken = {w, *(p.split(" ")[0] for p in params)}
                channels_even = self._dataflow(body, w, label, channels_even, taken)
            if gates and rng.random() < 0.35:
                gate = rng.choice(gates)
                option = rng.choice(["", ", reduction 2", ", reduction 4 if planes >= 16 else 2"])
                body.append(f"{label('se')}: {gate}{option}")
        body.append(f"{label('last')}: conv 1x1 planes * expansion")
        if not preact:
            zero = ", zero_init" if rng.random() < 0.5 else ""
            body.append(f"{label('bnl')}: batchnorm{zero}")
        if gates and rng.random() < 0.3:
            body.append(f"{label('se')}: {rng.choice(gates)}")
        if facts["drop_path"]:
            body.append("       drop_path drop_path, mode drop_mode")
        body.append("       add shortcut")
        if not preact:
            body.append(f"       {rng.choice(['relu', 'relu', 'silu'])}")
        facts["random"] = facts["random"] or facts["drop_path"]
        text = f"block {name}({', '.join(params)}) {{\n" + _lines(body) + "}\n"
        return name, text, facts

    def _dataflow(self, body: list[str], w: str, label, even: bool, taken: set[str]) -> bool:
        """One of: the parts of a split, each with layers of its own (a chain of them, as
        Res2Net's, or a selective kernel's dilations); a global-context attention (a softmax over
        positions, a kept value multiplied and added); a radix attention (a softmax across the
        parts); an `if` on the block's stride. The value keeps `w` channels, but after a radix
        attention (`w // 2`). Returns whether the channels are still `w`."""
        rng = self.rng
        kind = rng.choice(["each", "each", "context", "radix", "if"] if even else ["context", "if"])

        def value(default: str) -> str:  # a kept value's name: a layer's, where it is free
            name = label(default)
            return name if name not in taken else self.name(default)

        if kind == "each":
            body.append("       split 2")
            conv = (f"conv 3x3 {w} // 2, dilation i + 1" if rng.random() < 0.5
                    else f"conv {w} // 2, kernel 3 + 2 * i")  # fmt: skip
            chain = rng.random() < 0.5
            inner = ["if i > 0 {", "    add previous", "}"] if chain else []
            inner += [f"{label('p')}: {conv}", f"{label('q')}: batchnorm",
                      f"       {rng.choice(ACTIVATIONS)}"]  # fmt: skip
            body.append("each i {\n" + "".join(f"        {line}\n" for line in inner) + "    }")
            if rng.random() < 0.7:
                body.append("       concat")
            else:  # the parts weighted by a softmax across them
                kept = value("parted")
                body += [f"       keep {kept}", "       sum parts", "       global_avg_pool",
                         f"{label('fc')}: conv 1x1 {w}, bias", "       split 2",
                         "       softmax parts", f"       multiply {kept}", "       concat"]  # fmt: skip
            return even
        if kind == "context":
            kept = value("ctx")
            body += [f"       keep {kept}", f"{label('ca')}: conv 1x1 1, bias",
                     "       softmax positions", f"       multiply {kept}", "       sum positions",
                     f"{label('cm')}: conv 1x1 {w}, bias", f"       add {kept}"]  # fmt: skip
            return even
        if kind == "radix":
            kept = value("splits")
            body += ["       split 2", f"       keep {kept}", "       sum parts",
                     "       global_avg_pool", f"{label('fr')}: conv 1x1 {w}, bias",
                     "       split 2", "       softmax parts", f"       multiply {kept}",
                     "       sum parts"]  # fmt: skip
            return False
        if rng.random() < 0.5:
            body += ["if stride > 1 {", "    avg_pool 3x3, stride 1, padding 1, count_include_pad",
                     "}"]  # fmt: skip
        else:
            body += ["if stride == 1 {", f"    {label('ic')}: conv 1x1 {w}", "} else {",
                     "    relu", "}"]  # fmt: skip
        return even

    def _activation(self, used: set[str]) -> str:
        rng = self.rng
        kind = rng.choice(ACTIVATIONS)
        if rng.random() < 0.25:
            label = rng.choice([k for k in ACTIVATIONS if k not in used] or ["act"])
            if label not in used:
                used.add(label)
                return f"{label}: {rng.choice(ACTIVATIONS)}"  # `relu: gelu`
        return f"       {kind}"

    def stem(self) -> tuple[str, str]:
        rng = self.rng
        name = self.name("st")
        body = ["conv1: conv 3x3 width" + (", stride 2" if rng.random() < 0.3 else ""),
                "if not preact {", "    bn1: batchnorm", f"         {rng.choice(ACTIVATIONS[:3])}",
                "}"]  # fmt: skip
        if rng.random() < 0.3:
            body.append("pool: max_pool 3x3, stride 1, padding 1")
        return name, f"stem {name}(width = 8) {{\n" + _lines(body) + "}\n"

    def shortcut(self) -> tuple[str, str]:
        rng = self.rng
        name = self.name("sc").upper()
        if rng.random() < 0.5:
            body = ["if stride != 1 or inplanes != outplanes {",
                    f"    conv {rng.choice(['1x1', '3x3'])} outplanes, stride stride",
                    "    if not preact {", "        batchnorm", "    }", "}"]  # fmt: skip
        else:
            body = ["if stride != 1 or inplanes != outplanes {", "    if stride > 1 {",
                    "        avg_pool stride, stride stride, ceil", "    } else {",
                    "        identity", "    }", "    conv 1x1 outplanes",
                    "    if not preact {", "        batchnorm", "    }", "}"]  # fmt: skip
        return name, f"shortcut {name}(outplanes, stride) {{\n" + _lines(body) + "}\n"

    # --- a whole spec -------------------------------------------------------------------------
    def spec(self) -> Spec:
        rng = self.rng
        preact = rng.random() < 0.3
        parts, definitions = [], 0
        gates = []
        for _ in range(rng.randint(1, 3)):
            name, text = self.gate()
            gates.append(name)
            parts.append(text)
            definitions += 1
        blocks = []
        for _ in range(rng.randint(3, 5)):
            name, text, facts = self.block(preact, gates, rng.choice([1, 2]))
            blocks.append((name, facts))
            parts.append(text)
            definitions += 1
        stem = "cifar, width 8"
        if rng.random() < 0.5:
            name, text = self.stem()
            stem = f"{name}, width 8"
            parts.append(text)
            definitions += 1
        shortcuts = ["A", "B", "C", "D"]
        for _ in range(rng.choice([0, 1, 1, 2])):
            name, text = self.shortcut()
            shortcuts.append(name)
            parts.append(text)
            definitions += 1
        first, facts = blocks[0]
        options = "".join(f", {k} {v}" for k, v in facts["options"].items())
        lines = [
            f"input    {rng.choice([1, 3])}x{rng.randint(9, 14)}x{rng.randint(9, 14)}",
            f"classes  {rng.randint(2, 7)}",
            f"stem     {stem}",
            f"block    {first}{options}",
            f"shortcut {rng.choice(shortcuts)}",
        ]
        roll = rng.random()
        if roll < 0.3:
            lines.append("batchnorm momentum 0.2, eps 0.001")
        elif roll < 0.45:  # every batchnorm a GroupNorm (the widths are multiples of 4)
            lines.append(f"norm     groupnorm {rng.choice([2, 4])}")
        if rng.random() < 0.2:
            lines.append("head     dropout 0.2")
        drop = all(f["drop_path"] for _, f in blocks) and rng.random() < 0.6
        if drop:
            lines.append("drop_path 0.2")
        random_layers = drop or "dropout" in "".join(lines)
        width, strides, channels = 8, 0, 8
        for index, (name, facts) in enumerate(blocks):  # a stage for each block
            width = rng.choice([width, width + 4, width * 2 if width < 16 else width])
            width = max(width, -(-channels // facts["expansion"]))  # option A only widens
            channels = width * facts["expansion"]
            stage = f"stage: {rng.randint(1, 2)} x {width}"
            if index and strides < 2 and rng.random() < 0.6:
                stage += ", stride 2"
                strides += 1
            if name != first:
                stage += f", block {name}"
                stage += "".join(f", {k} {v}" for k, v in facts["options"].items())
            if rng.random() < 0.3:
                stage += f", shortcut {rng.choice(shortcuts)}"
            if facts["dilation"] and all(f["dilation"] for _, f in blocks) and rng.random() < 0.3:
                stage += ", dilation 2"
            lines.append(stage)
            random_layers = random_layers or facts["random"]
        network = "network net {\n" + "".join(f"    {line}\n" for line in lines) + "}\n"
        return Spec("\n".join(parts) + "\n" + network, definitions, random_layers)


def _label_stream(rng: random.Random):
    """Names for layers: numbered ones, and now and then one the generated code also uses."""
    number = 0
    while True:
        number += 1
        if rng.random() < 0.2:
            yield rng.choice(COLLIDING)
        yield f"l{number}"


def _lines(body: list[str]) -> str:
    return "".join(f"    {line}\n" for line in body)


def specs(count: int, seed: int = 0):
    """`count` specs, the same for the same seed."""
    generator = Generator(seed)
    for _ in range(count):
        yield generator.spec()


# --- the comparison ---------------------------------------------------------------------------
TOLERANCE = 1e-4  # max abs logit difference, float32 on the CPU


@dataclass
class Result:
    outcome: str  # "equal" (both packages agree with the analysis) or "refused" (located errors)
    detail: str = ""


def verify(spec: Spec, directory, index: int, train: bool = True) -> Result:
    """Check `spec`; when it passes, build both packages and compare them with the analysis and
    with each other, in evaluation mode and (with `train`, for networks without random layers)
    in training mode too. Raises AssertionError on any disagreement."""
    import importlib.util
    import sys
    from pathlib import Path

    import jax
    import numpy as np
    import torch

    from resdsl.compile import build_files, write_package
    from resdsl.diagnostics import SpecError
    from resdsl.frontend import load_spec

    directory = Path(directory)
    path = directory / f"case{index}.res"
    path.write_text(spec.text)
    try:
        loaded, analysis = load_spec(path)
    except SpecError as error:
        rendered = error.report.render()
        assert "internal error" not in rendered and "Traceback" not in rendered, rendered
        assert all(d.span is not None for d in error.report.diagnostics), rendered
        return Result("refused", rendered.splitlines()[0])
    packages = {}
    for backend in ("torch", "jax"):
        files = build_files(loaded, analysis, backend=backend, output=directory / f"p{index}")
        target = directory / f"case{index}_{backend}"
        write_package(target, files, force=True)
        name = f"differential_{index}_{backend}"
        for stale in [m for m in sys.modules if m == name or m.startswith(f"{name}.")]:
            del sys.modules[stale]  # a package of an earlier case under the same name
        module_spec = importlib.util.spec_from_file_location(
            name, target / "__init__.py", submodule_search_locations=[str(target)]
        )
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        module_spec.loader.exec_module(module)
        packages[backend] = module
    model_module = sys.modules[f"differential_{index}_torch.model"]
    torch.manual_seed(index)
    model = model_module.build_model()
    count = sum(p.numel() for p in model.parameters())
    assert count == analysis.params, (count, analysis.params, spec.text)
    jax_package = packages["jax"]
    channels, height, width = analysis.network.input
    _randomise(model, channels, height, width, index)
    images = torch.randn(3, channels, height, width, generator=torch.Generator().manual_seed(index))
    arrays = {k: v.numpy() for k, v in model.state_dict().items()}
    converted = jax_package.from_torch(arrays)  # every name and shape is the JAX network's
    jax_count = sum(leaf.size for leaf in jax.tree_util.tree_leaves(converted["params"]))
    assert jax_count == analysis.params, (jax_count, analysis.params, spec.text)
    nhwc = jax.numpy.asarray(images.numpy().transpose(0, 2, 3, 1))
    modes = ("eval", "train") if train and not spec.random_layers else ("eval",)

    def logits(variables, images):  # one compilation for the modes compared
        network = jax_package.build_model()
        out = {"eval": network.apply(variables, images)}
        if "train" in modes:
            out["train"] = network.apply(variables, images, train=True, mutable=["batch_stats"])[0]
        return out

    got = jax.jit(logits)(converted, nhwc)
    for mode in modes:
        model.train(mode == "train")
        with torch.no_grad():
            expected = model(images).numpy()
        difference = float(np.abs(np.asarray(got[mode]) - expected).max())
        assert difference <= TOLERANCE * max(1.0, float(np.abs(expected).max())), (
            mode, difference, spec.text
        )  # fmt: skip
    for backend in ("torch", "jax"):
        for key in [k for k in sys.modules if k.startswith(f"differential_{index}_{backend}")]:
            del sys.modules[key]
    return Result("equal")


def _randomise(model, channels: int, height: int, width: int, seed: int) -> None:
    """Random BN parameters and statistics (those of the network's own activations, perturbed),
    and random GroupNorm parameters."""
    import torch

    generator = torch.Generator().manual_seed(seed + 1)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for gn in (m for m in model.modules() if isinstance(m, torch.nn.GroupNorm)):
            gn.weight.copy_(torch.empty_like(gn.weight).uniform_(0.5, 1.5, generator=generator))
            gn.bias.copy_(torch.empty_like(gn.bias).uniform_(-0.2, 0.2, generator=generator))
        momenta = [bn.momentum for bn in norms]
        for bn in norms:
            bn.weight.copy_(torch.empty_like(bn.weight).uniform_(0.5, 1.5, generator=generator))
            bn.bias.copy_(torch.empty_like(bn.bias).uniform_(-0.2, 0.2, generator=generator))
            bn.momentum = 1.0
        model.train()
        model(torch.randn(4, channels, height, width, generator=generator))
        for bn, momentum in zip(norms, momenta, strict=True):
            bn.momentum = momentum
            bn.running_var.add_(0.5)
    model.eval()
