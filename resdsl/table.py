"""What `resdsl show` prints: a network's blocks as a table, and the short forms of its layers
(the picture, `picture.py`, draws the same blocks).

The table has a row per block (the stem, `layer2.0`, ..., the head): its layers in short form,
its shortcut, its output shape and its parameters; with `--layers`, a row per primitive layer.
Identical consecutive blocks are folded into one row (`layer1.1-199 (x199)`), so ResNet-1202
stays readable; the parameters of a folded row count all of its blocks, so the column adds up to
the network's total.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .analysis import Analysis, cost
from .layers import KINDS
from .lower import Add, Block, Each, Group, Layer, Shortcut
from .names import shortcut_attribute

# --- short forms ---------------------------------------------------------------------------


def shape_text(shape) -> str:
    return "x".join(str(v) for v in shape)


def short(layer: Layer) -> str:
    """One layer as the paper writes it: `3x3/2 conv 128`, `BN`, `ReLU`, `fc 1000`."""
    if isinstance(layer, Block):  # a block used as a layer
        return f"{layer.name}: {layer.definition}"
    return KINDS[layer.kind].short(layer.args)


def shortcut_text(add: Add) -> str:
    if add.shortcut is None:
        return "identity"
    return ", ".join(short(layer) if isinstance(layer, Layer) else layer.definition
                     for layer in add.shortcut.layers
                     if not isinstance(layer, Layer) or layer.kind != "identity")  # fmt: skip


def shortcut_style(shortcut: Shortcut | None) -> str:
    """identity | projection | free (parameter-free but not the identity: option A's padding)."""
    if shortcut is None:
        return "identity"
    return "projection" if shortcut.projects else "free"


def block_text(block: Block) -> str:
    """A block's main path in short form; `add` where the shortcut joins it."""
    parts = []
    for item in block.items:
        if isinstance(item, Layer):
            parts.append(short(item))
        elif isinstance(item, Group):
            parts.extend(short(layer) for layer in item.layers if layer.kind != "identity")
        elif isinstance(item, Block):
            parts.append(f"{item.name}: {item.definition}")
        elif isinstance(item, Each):
            inner = [f"{x.name}: {x.definition}" if isinstance(x, Block) else short(x)
                     for x in item.parts[0] if isinstance(x, Layer | Block)]  # fmt: skip
            parts.append(f"each of {len(item.parts)} parts [{', '.join(inner)}]")
        elif isinstance(item, Add):
            parts.append("add")
    return ", ".join(parts)


def block_shortcut(block: Block) -> str:
    adds = [item for item in block.items if isinstance(item, Add)]
    return "; ".join("+ " + shortcut_text(add) for add in adds) or "-"


# --- the table -------------------------------------------------------------------------------


@dataclass
class Run:
    """Consecutive blocks of a stage that are the same (one block, or a folded run)."""

    stage: int  # index into lowered.stages
    first: int
    blocks: list[Block] = field(default_factory=list)

    def label(self, attr: str) -> str:
        if len(self.blocks) == 1:
            return f"{attr}.{self.first}"
        last = self.first + len(self.blocks) - 1
        return f"{attr}.{self.first}-{last}"

    @property
    def block(self) -> Block:
        return self.blocks[0]


_DROP = re.compile(r"drop path [0-9.e-]+")  # blocks differing only in this rate fold


def _drop_range(run: Run) -> str | None:
    """`drop path 0.00926-0.167` for a run of blocks with rising stochastic-depth rates."""
    rates = [
        layer.args["p"] for b in run.blocks for layer in b.layers() if layer.kind == "drop_path"
    ]
    if len(set(rates)) < 2:
        return None
    return f"drop path {rates[0]:.3g}-{rates[-1]:.3g}"


def run_text(run: Run) -> str:
    text = block_text(run.block)
    drop = _drop_range(run)
    return _DROP.sub(drop, text, count=1) if drop else text


def _same(a: Block, b: Block) -> bool:
    return a is b or (
        a.definition == b.definition
        and a.inp == b.inp
        and a.out == b.out
        and _DROP.sub("drop path", block_text(a)) == _DROP.sub("drop path", block_text(b))
        and block_shortcut(a) == block_shortcut(b)
        and cost(a.layers()) == cost(b.layers())
    )


def runs(lowered, fold: bool = True) -> list[Run]:
    out: list[Run] = []
    for s, stage in enumerate(lowered.stages):
        for i, block in enumerate(stage.blocks):
            last = out[-1] if out else None
            if fold and last is not None and last.stage == s and _same(last.block, block):
                last.blocks.append(block)
            else:
                out.append(Run(s, i, [block]))
    return out


def _params(layers) -> int:
    return cost(layers).params


def table(spec, analysis: Analysis, layers: bool = False) -> str:
    lowered = analysis.lowered
    net = analysis.network
    title = (
        f"{net.name} ({spec.path}): input {shape_text(net.input)}, {net.classes} classes, "
        f"{analysis.depth} layers"
    )
    folded = ""  # the first folded run's label, for the note below the table
    if layers:
        header = ("layer", "kind", "output", "params")
        rows: list[tuple[str, ...]] = []
        _layer_rows(rows, "stem", lowered.stem, 1)
        for run in runs(lowered):
            attr = lowered.stages[run.stage].attr
            if len(run.blocks) > 1 and not folded:
                folded = run.label(attr)
            _layer_rows(rows, run.label(attr), run.block, len(run.blocks), _drop_range(run),
                        shortcut_attribute(lowered.network.layout))  # fmt: skip
        if lowered.neck is not None:  # a head definition's layers: network attributes
            _layer_rows(rows, "head", lowered.neck, 1)
        for layer in lowered.head:
            rows.append((layer.name or "head", short(layer), shape_text(layer.out),
                         _count(layer.params)))  # fmt: skip
        total = ("total", "", "", f"{analysis.params:,}")
        right = (False, False, False, True)
    else:
        header = ("block", "layers", "shortcut", "output", "params")
        rows = [("stem", block_text(lowered.stem), "", shape_text(lowered.stem.out),
                 f"{_params(lowered.stem.layers()):,}")]  # fmt: skip
        for run in runs(lowered):
            attr = lowered.stages[run.stage].attr
            label = run.label(attr)
            if len(run.blocks) > 1:
                folded = folded or label
                label += f" (x{len(run.blocks)})"
            params = sum(_params(b.layers()) for b in run.blocks)
            rows.append((label, run_text(run), block_shortcut(run.block),
                         shape_text(run.block.out), f"{params:,}"))  # fmt: skip
        head = lowered.head
        neck = lowered.neck
        text = ", ".join(short(layer) for layer in head)
        if neck is not None:
            text = f"{block_text(neck)}, {text}"
        rows.append(("head", text, "", shape_text(head[-1].out),
                     f"{_params(head) + (_params(neck.layers()) if neck else 0):,}"))  # fmt: skip
        total = ("total", "", "", "", f"{analysis.params:,}")
        right = (False, False, False, False, True)
    everything = [header, *rows, total]
    widths = [max(len(r[i]) for r in everything) for i in range(len(header))]

    def line(r):
        cells = [c.rjust(w) if a else c.ljust(w) for c, w, a in zip(r, widths, right)]
        return "  ".join(cells).rstrip()

    lines = [title, "", line(header), *map(line, rows)]
    lines += ["-" * max(len(x) for x in lines[2:]), line(total)]
    if folded:
        ranged = any("drop path" in r[1] and "-" in r[1].split("drop path")[1] for r in rows)
        lines.append(
            f"({folded} and the like: identical consecutive blocks shown once; "
            "their params count them all"
            + ("; a drop path range spans their rates)" if ranged else ")")
        )
    return "\n".join(lines)


def _count(params: int) -> str:
    return f"{params:,}" if params else ""


def _layer_rows(rows: list, label: str, block: Block, times: int, drop: str | None = None,
                shortcut: str = "downsample"):  # fmt: skip
    def emit(name: str, layer: Layer) -> None:
        kind = drop if drop and layer.kind == "drop_path" else short(layer)
        shape = (layer.parts, *layer.out) if layer.parts is not None else layer.out
        rows.append((name, kind, shape_text(shape), _count(layer.params * times)))

    for item in block.items:
        if isinstance(item, Each):  # part i's layers: NAME.i (a list per name)
            for i, part in enumerate(item.parts):
                for inner in part:
                    if isinstance(inner, Block):
                        _layer_rows(rows, f"{label}.{inner.name}.{i}", inner, times)
                    elif isinstance(inner, Layer):
                        emit(f"{label}.{inner.name}.{i}" if inner.name else label, inner)
            continue
        if isinstance(item, Layer):
            emit(f"{label}.{item.name}" if item.name else label, item)
        elif isinstance(item, Group):
            for i, layer in enumerate(item.layers):
                if isinstance(layer, Block):
                    _layer_rows(rows, f"{label}.{item.name}.{i}", layer, times)
                else:
                    emit(f"{label}.{item.name}.{i}", layer)
        elif isinstance(item, Block):
            _layer_rows(rows, f"{label}.{item.name}", item, times)
        elif isinstance(item, Add):
            if item.shortcut is None:
                rows.append((label, "add identity", shape_text(item.out), ""))
                continue
            sc = item.shortcut.layers
            for i, layer in enumerate(sc):
                name = f"{label}.{shortcut}" + (f".{i}" if len(sc) > 1 else "")
                if isinstance(layer, Block):  # a block used as the shortcut: its own keys
                    _layer_rows(rows, name, layer, times)
                else:
                    emit(name, layer)
            rows.append((label, "add", shape_text(item.out), ""))
