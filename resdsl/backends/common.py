"""What both model printers say the same way: the docstrings of model.py and of its classes, the
shortcuts' descriptions (from the comments above their definitions), Python names and types.
Everything here reads the lowered network (`lower.Lowered`, the classes' forms); nothing reads
the syntax of a definition."""

from __future__ import annotations

from .. import ir
from ..analysis import Analysis
from ..forms import AddNode, BlockClass, CallNode, EachNode, GroupNode, LayerNode, WhenNode, walk
from ..layers import KINDS
from ..lower import Block, Group, Lowered
from ..quoting import code_text
from ..summary import giga
from ..symbolic import symbolic, type_of


def model_context(spec: ir.Spec, analysis: Analysis) -> dict:
    """What every file of a package says about the network (names, input, counts)."""
    net = spec.network
    bn = net.batchnorm
    return {
        "spec_path": code_text(spec.path),
        "net": net,
        "analysis": analysis,
        "custom_norm": (bn.momentum, bn.eps) != (0.1, 1e-5),
        "stochastic": analysis.lowered.stochastic,  # dropout or drop path: an rng in training
    }


ANNOTATIONS = {"int": "int", "float": "float", "bool": "bool", "dims": "tuple[int, int]",
               "word": "str"}  # fmt: skip


def annotation(value) -> str:
    return ANNOTATIONS.get(type_of(value), "int")


def speller(cls: BlockClass, own: dict[str, str]):
    """How a class spells the names of its form: `own` for inplanes and the like, else its
    parameters' and values' Python names (with `prefix` where they are fields)."""

    def spell(name: str) -> str:
        if name in own:
            return own[name]
        return cls.spelling.get(name, name)

    return spell


# --- docstrings -----------------------------------------------------------------------------------


def class_doc(cls: BlockClass) -> str:
    """`relu(x + F(x)), F = 3x3 conv, BN, ReLU, 3x3 conv, BN.`, and where the stride sits."""
    nodes = cls.form.nodes
    add = next((i for i, n in enumerate(nodes) if isinstance(n, AddNode)), None)
    main = nodes if add is None else nodes[:add]
    after = [] if add is None else [n.kind for n in nodes[add + 1 :] if isinstance(n, LayerNode)]
    parts = [_part(node) for node in main]
    f = ", ".join(p for p in parts if p)
    if cls.residual:
        formula = "relu(x + F(x))" if "relu" in after else "x + F(x)"
    elif add is not None and cls.role == "stage":
        formula = "relu(F(x)), no shortcut" if "relu" in after else "F(x), no shortcut"
    else:
        formula = "F(x)"
    text = f"{formula}, F = {f}." if f else f"{formula}."
    convs = [n for n in main if isinstance(n, LayerNode) and n.kind == "conv"]
    strided = [n for n in walk(nodes) if isinstance(n, LayerNode) and n.labelled
               and symbolic(n.args.get("stride", 1))]  # fmt: skip
    if len(strided) == 1 and len({n.args["kernel"] for n in convs}) > 1:
        kernel = "x".join(map(str, strided[0].args["kernel"]))
        text += f"\n\n    The stride sits on the {kernel} conv ({strided[0].attr}).\n    "
    return text


def _parts(nodes) -> str:
    return ", ".join(p for p in map(_part, nodes) if p)


def _part(node) -> str:
    if isinstance(node, GroupNode):
        return node.attr
    if isinstance(node, EachNode):
        return f"on each part [{_parts(node.nodes)}]"
    if isinstance(node, WhenNode):  # an `if` on a value of the block: what either side does
        sides = [_parts(side) for side in (node.then, node.otherwise)]
        return " or ".join(f"({side})" if ", " in side else side for side in sides if side)
    if isinstance(node, CallNode):
        return f"{node.attr} ({node.definition.replace('_', ' ')})"
    if isinstance(node, LayerNode):
        return KINDS[node.kind].doc(node.args)
    return ""


def describe_shortcut(lowered: Lowered, name: str) -> str:
    """A shortcut as the comment above its definition says it, as part of a sentence."""
    if name == "none":
        return "none (plain blocks)"
    doc = lowered.definitions.shortcuts[name].doc
    if not doc:
        return f"`{name}` (defined in the spec)"
    first = doc.split(". ")[0].rstrip(".")
    return first[0].lower() + first[1:]


def shortcut_doc(lowered: Lowered, name: str, guarded: bool) -> str:
    """The docstring of the method that builds a shortcut (`guarded`: it may return None)."""
    text = lowered.definitions.shortcuts[name].doc.split(". ")[0].rstrip(".") or (
        f"Shortcut {name}"
    )  # fmt: skip
    if guarded and "identity" not in text:
        text += "; None is the identity"
    return text + "."


def stem_description(lowered: Lowered) -> str:
    parts = []
    for item in lowered.stem.items:
        layers = item.layers if isinstance(item, Group) else (item,)
        for layer in layers:
            if isinstance(layer, Block):
                parts.append(f"{layer.name} ({layer.definition.replace('_', ' ')})")
            elif layer.kind != "identity":
                parts.append(KINDS[layer.kind].short(layer.args))
    return ", ".join(parts)


def module_doc(lowered: Lowered, spec: ir.Spec, analysis: Analysis, flax: bool = False) -> str:
    """model.py's docstring: what the network is, stage by stage, and what it counts."""
    net = spec.network
    residual = any(block.residual for block in lowered.blocks())
    lines = [
        f"{net.name}: a {analysis.depth}-layer {'residual' if residual else 'plain'} network for "
        f"{'x'.join(map(str, net.input))} images and {net.classes} classes"
        f"{' (Flax linen)' if flax else ''}.",
        "",
        f"Stem ({net.stem.name}): {stem_description(lowered)}.",
        "Stages:",
    ]
    for stage, part in zip(lowered.stages, analysis.stages, strict=True):
        st = stage.ir
        extra = f", stride {st.stride}" if st.stride > 1 else ""
        extra += f", dilation {st.dilation}" if st.dilation > 1 else ""
        lines.append(
            f"    {stage.attr} ({st.name}): {st.blocks} x {stage.cls.name}({st.width}){extra} -> "
            f"{'x'.join(map(str, part.out))}"
        )
    kinds = sorted({st.shortcut for st in net.stages})
    lines.append("Shortcuts: " + "; ".join(describe_shortcut(lowered, k) for k in kinds) + ".")
    if net.drop_path:
        lines.append(
            f"Stochastic depth: block l of {sum(st.blocks for st in net.stages)} drops its "
            f"residual branch with probability {net.drop_path:g} * l / L."
        )
    dropout = f", dropout {net.head.dropout:g}" if net.head.dropout else ""
    pre = "BN, ReLU, " if lowered.preact else ""
    lines.append(f"Head: {pre}global average pool{dropout}, {net.classes}-way fully connected.")
    lines.append(
        f"{analysis.params:,} parameters, {analysis.macs:,} multiply-adds ({giga(analysis.macs)})."
    )
    if flax:
        nhwc = ", ".join(map(str, (net.input[1], net.input[2], net.input[0])))
        lines.append(
            f"\nImages are NHWC float32 ([N, {nhwc}]); shapes above are channels x height x "
            "width.\nVariables are "
            + ('{"params", "batch_stats"}' if "batchnorm" in lowered.kinds else '{"params"}')
            + "; module names mirror the PyTorch package's (weights.py)."
        )
    return '"""' + "\n".join(lines) + '\n"""'


def stage_extras(lowered: Lowered) -> list[str]:
    """Constructor arguments of the stages' classes that are neither the stage's width, stride,
    dilation nor drop rate: a block option that differs from stage to stage."""
    given = {"planes", "stride", "dilation", "drop_path", "index"}
    return sorted({v for c in lowered.stage_classes for v in c.variables} - given)
