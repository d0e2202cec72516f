"""What `resdsl show -o FILE` draws: a network's architecture as a picture.

It follows He et al. 2015, Fig. 3: a column of boxes from the image to the fc, one per
convolution, pool and fc (one per block for networks deeper than `PER_LAYER_LIMIT`), the
shortcuts drawn as arcs beside it from a block's input to its add (identity solid, projection
dashed, zero-padding dotted), the stages labelled with their output size. matplotlib (Agg) is
imported only when a picture is drawn.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .analysis import Analysis
from .cli.show import FOLD_LIMIT, FORMATS, PER_LAYER_LIMIT
from .layers import KINDS
from .lower import Add, Block, Each, Group, Keep, Layer
from .table import runs, short, shortcut_style


class ShowError(Exception):
    pass


def _kernel(args: dict) -> str:
    kh, kw = args["kernel"]
    return f"{kh}x{kw}"


# --- the picture -----------------------------------------------------------------------------

DRAWN = ("conv", "max_pool", "avg_pool", "global_avg_pool", "linear")


@dataclass
class Box:
    text: str
    colour: int  # -1: stem and head, else the stage's index
    small: bool = False  # a block used as a layer (an SE gate), an attention, a split
    stack: int = 1  # blocks folded into it
    row: tuple[str, ...] = ()  # the parts of `each`, side by side (then `text` is unused)


@dataclass
class Arc:
    first: int  # the arc leaves above box `first` ...
    last: int  # ... and joins below box `last`
    style: str  # identity | projection | free


@dataclass
class Figure:
    title: str
    boxes: list[Box]
    arcs: list[Arc]
    stages: list[tuple[int, int, str, str]]  # first box, last box, name, output size
    per_block: bool


def _layer_boxes(block: Block, colour: int) -> list[Box]:
    return _boxes(block.items, colour)


def _boxes(items, colour: int) -> list[Box]:
    """The boxes of a block's items: convolutions, pools and fcs; a split and a join of parts;
    the parts of `each` side by side; an attention (the layers from a kept value to the
    `multiply` or `add` that reads it) as one small box; a block used as a layer drawn open
    when it is on the path (it has convolutions there, or splits), else as a small box (a
    gate)."""
    boxes: list[Box] = []
    kept = {"input": 0}
    for item in items:
        if isinstance(item, Keep):
            kept[item.name] = len(boxes)
            continue
        if isinstance(item, Layer) and KINDS[item.kind].gate:
            name = item.args["value"]
            start = kept.get(name, len(boxes))
            if start < len(boxes):  # what computed the weights: beside the path
                sign = "\u00d7" if item.kind == "multiply" else "+"
                boxes[start:] = [Box(f"attention, {sign} {name}", colour, small=True)]
            continue
        for layer in item.layers if isinstance(item, Group) else (item,):
            if isinstance(layer, Layer) and layer.kind in DRAWN:
                boxes.append(Box(_box_text(layer), colour))
            elif isinstance(layer, Layer) and layer.kind in PARTS:
                boxes.append(Box(PARTS[layer.kind](layer.args), colour, small=True))
            elif isinstance(layer, Each):
                row = tuple(" \u00b7 ".join(_texts(part)) or "identity" for part in layer.parts)
                boxes.append(Box("", colour, row=row))
            elif isinstance(layer, Block) and (layer.depth or _splits(layer)):
                boxes += _boxes(layer.items, colour)  # drawn open: it is on the path
            elif isinstance(layer, Block):
                boxes.append(Box(f"{layer.name}: {layer.definition}", colour, small=True))
    return boxes


# the layers that make and join parts, drawn small
PARTS = {
    "split": lambda a: f"split {a['parts']}",
    "concat": lambda a: "concat",
    "sum": lambda a: "sum" if a["axis"] == "parts" else f"sum over {a['axis']}",
}


def _texts(items) -> list[str]:
    """The drawn layers of one part, in short (`3x3/2 conv 128 d2`)."""
    texts = []
    for item in items:
        if isinstance(item, Layer) and item.kind in DRAWN:
            texts.append(short(item))
        elif isinstance(item, Block):
            texts += _texts(item.items)
        elif isinstance(item, Group):
            texts += _texts(item.layers)
    return texts


def _splits(block: Block) -> bool:
    return any(isinstance(item, Each) or (isinstance(item, Layer) and item.kind == "split")
               for item in block.items)  # fmt: skip


def _box_text(layer: Layer) -> str:
    a = layer.args
    if layer.kind == "conv":
        text = f"{_kernel(a)} conv, {a['channels']}"
        if a["groups"] > 1:
            text += f", {a['groups']} groups"
        if a["dilation"] > 1:
            text += f", dilation {a['dilation']}"
        return text + (f", /{a['stride']}" if a["stride"] > 1 else "")
    if layer.kind in ("max_pool", "avg_pool"):
        text = f"{_kernel(a)} {layer.kind[:3]} pool"
        return text + (f", /{a['stride']}" if a["stride"] > 1 else "")
    if layer.kind == "global_avg_pool":
        return "avg pool"
    return f"fc {a['channels']}"


def _block_box(block: Block, colour: int, stack: int) -> Box:
    parts = []
    for item in block.items:
        layers = item.layers if isinstance(item, Group) else (item,)
        for layer in layers:
            if isinstance(layer, Layer) and layer.kind == "conv":
                a = layer.args
                stride = f"/{a['stride']}" if a["stride"] > 1 else ""
                parts.append(f"{_kernel(a)}{stride}, {a['channels']}")
            elif isinstance(layer, Block):
                parts.append(layer.name)
    text = " \u00b7 ".join(parts) or block.definition
    if stack > 1:
        text = f"{stack} \u00d7 [{text}]"
    return Box(text, colour, stack=stack)


def _arc(block: Block, first: int, last: int) -> Arc | None:
    adds = [item for item in block.items if isinstance(item, Add)]
    if not adds:
        return None
    return Arc(first, last, shortcut_style(adds[-1].shortcut))


def figure(analysis: Analysis) -> Figure:
    lowered = analysis.lowered
    net = analysis.network
    per_block = analysis.depth > PER_LAYER_LIMIT
    boxes: list[Box] = _layer_boxes(lowered.stem, -1)
    arcs: list[Arc] = []
    stages = []
    total_blocks = sum(len(stage.blocks) for stage in lowered.stages)
    for s, stage in enumerate(lowered.stages):
        start = len(boxes)
        fold = per_block and total_blocks > FOLD_LIMIT
        for run in (r for r in runs(lowered, fold) if r.stage == s):
            block = run.block
            first = len(boxes)
            if per_block:
                boxes.append(_block_box(block, s, len(run.blocks)))
            else:
                boxes.extend(_layer_boxes(block, s))
            arc = _arc(block, first, len(boxes) - 1)
            if arc is not None and len(boxes) > first:
                arcs.append(arc)
        name = stage.ir.name or stage.attr
        stages.append((start, len(boxes) - 1, name, f"{stage.out[1]}x{stage.out[2]}"))
    if lowered.neck is not None:  # a head definition's layers before the pool
        boxes += _layer_boxes(lowered.neck, -1)
    boxes += _layer_boxes(Block("head", {}, lowered.head, lowered.stages[-1].out,
                                lowered.head[-1].out), -1)  # fmt: skip
    title = f"{net.name}: {analysis.depth} layers, {analysis.params / 1e6:.1f}M parameters"
    return Figure(title, boxes, arcs, stages, per_block)


STYLES = {
    "identity": ("-", "identity shortcut"),
    "projection": ((0, (4, 2.5)), "projection shortcut"),
    "free": ((0, (1, 1.8)), "zero-padding shortcut (option A)"),
}
PALETTE = ["#cfe2f3", "#d9ead3", "#fff2cc", "#f4cccc", "#d9d2e9", "#fce5cd", "#d0e0e3"]


def draw(analysis: Analysis, output: str | Path, input_size: str = "") -> Path:
    """Draw the architecture into `output` (.png or .svg), atomically; returns its path."""
    output = Path(output)
    suffix = output.suffix.lower()
    if suffix not in FORMATS:
        raise ShowError(f"{output.as_posix()}: the picture's name must end in .png or .svg")
    try:
        import matplotlib
    except ModuleNotFoundError:
        raise ShowError(
            "resdsl show -o needs matplotlib: pip install 'resdsl[plot]' (make setup installs it)"
        ) from None
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch
    from matplotlib.path import Path as MPath

    fig_data = figure(analysis)
    boxes = fig_data.boxes
    # geometry, in inches (the axes fill the figure, one data unit an inch)
    n = len(boxes)
    pitch = 0.36 if n <= 70 else max(0.22, 25.0 / n)
    height_box = pitch * 0.62
    box_w = 2.9 if fig_data.per_block else 2.0
    left = 1.45  # room for the stage labels
    cx = left + box_w / 2
    right_edge = left + box_w
    width = right_edge + 0.75
    top = 1.15  # title, legend, "image"
    height = top + n * pitch + 0.25
    font = 8.0 if pitch >= 0.3 else 7.0

    plt.rcParams["svg.hashsalt"] = "resdsl"
    plt.rcParams["svg.fonttype"] = "none"
    fig = plt.figure(figsize=(width, height), dpi=100)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, width)
    ax.set_ylim(-height, 0)
    ax.axis("off")

    def y_of(i: int) -> float:  # the centre of box i
        return -(top + (i + 0.5) * pitch)

    ink = "0.15"
    ax.text(
        width / 2, -0.22, fig_data.title, ha="center", va="center", fontsize=9.5, fontweight="bold"
    )
    used = [s for s in STYLES if any(a.style == s for a in fig_data.arcs)]
    for k, style in enumerate(used):
        y = -0.45 - 0.16 * k
        ax.add_line(Line2D([0.35, 0.85], [y, y], color=ink, linestyle=STYLES[style][0], lw=1.2))
        ax.text(0.95, y, STYLES[style][1], va="center", fontsize=7)
    image_y = y_of(0) + pitch * 0.93
    ax.text(cx, image_y, f"image{input_size}", ha="center", va="bottom", fontsize=font)
    arrow = {"arrowstyle": "-|>", "color": ink, "shrinkA": 0, "shrinkB": 0}
    ax.add_patch(
        FancyArrowPatch(
            (cx, image_y), (cx, y_of(0) + height_box / 2), mutation_scale=6, lw=0.7, **arrow
        )
    )

    def half(box: Box) -> float:  # half a box's height
        return height_box / 2 * (0.8 if box.small else 1.0)

    rounded = "round,pad=0,rounding_size=0.05"
    for i, box in enumerate(boxes):
        y, h = y_of(i), 2 * half(box)
        w = box_w * (0.8 if box.small else 1.0)
        fill = "white" if box.colour < 0 else PALETTE[box.colour % len(PALETTE)]
        if box.row:  # the parts of `each`, side by side
            gap = 0.06
            part_w = (w - gap * (len(box.row) - 1)) / len(box.row)
            for k, text in enumerate(box.row):
                x0 = cx - w / 2 + k * (part_w + gap)
                ax.add_patch(FancyBboxPatch((x0, y - h / 2), part_w, h, boxstyle=rounded,
                                            facecolor=fill, edgecolor=ink, lw=0.8))  # fmt: skip
                ax.text(x0 + part_w / 2, y, text, ha="center", va="center",
                        fontsize=font - 1.5 - (len(box.row) > 2))  # fmt: skip
            if i + 1 < n:
                ax.add_patch(FancyArrowPatch((cx, y - h / 2), (cx, y_of(i + 1) + half(
                    boxes[i + 1])), mutation_scale=6, lw=0.7, **arrow))  # fmt: skip
            continue
        for k in range(min(box.stack, 3) - 1, -1, -1):  # a folded box: a small stack
            corner = (cx - w / 2 + 0.04 * k, y - h / 2 - 0.04 * k)
            ax.add_patch(
                FancyBboxPatch(
                    corner,
                    w,
                    h,
                    boxstyle=rounded,
                    facecolor=fill,
                    edgecolor=ink,
                    lw=0.8,
                    ls="--" if box.small else "-",
                )
            )
        ax.text(cx, y, box.text, ha="center", va="center", fontsize=font - box.small)
        if i + 1 < n:
            ax.add_patch(
                FancyArrowPatch(
                    (cx, y - h / 2),
                    (cx, y_of(i + 1) + half(boxes[i + 1])),
                    mutation_scale=6,
                    lw=0.7,
                    **arrow,
                )
            )
    # the shortcuts: from the gap above a block's first box to the gap below its last
    for arc in fig_data.arcs:
        y0 = y_of(arc.first) + pitch / 2
        y1 = y_of(arc.last) - pitch / 2
        reach = 0.22 + min(0.3, 0.05 * (arc.last - arc.first + 1))
        x0, x1 = right_edge - 0.1, right_edge + reach
        path = MPath(
            [(cx, y0), (x0, y0), (x1, y0), (x1, y1), (x0, y1), (cx + 0.02, y1)],
            [MPath.MOVETO, MPath.LINETO, MPath.CURVE4, MPath.CURVE4, MPath.CURVE4, MPath.LINETO],
        )
        ax.add_patch(FancyArrowPatch(path=path, arrowstyle="-|>", mutation_scale=7, color=ink,
                                     lw=1.0, linestyle=STYLES[arc.style][0]))  # fmt: skip
        ax.plot([cx], [y1], marker="o", markersize=2.5, color=ink)
    # the stages: a bracket on the left, the name and the output size
    for first, last, name, size in fig_data.stages:
        if last < first:
            continue
        ya = y_of(first) + height_box / 2
        yb = y_of(last) - height_box / 2
        x = left - 0.12
        ax.plot([x + 0.06, x, x, x + 0.06], [ya, ya, yb, yb], color="0.4", lw=0.9)
        ym = (ya + yb) / 2
        ax.text(x - 0.08, ym + 0.07, name, ha="right", va="bottom", fontsize=font,
                fontweight="bold")  # fmt: skip
        ax.text(x - 0.08, ym - 0.02, size, ha="right", va="top", fontsize=font, color="0.25")
    for parent in (output.parent, *output.parent.parents):
        if parent.exists():
            if not parent.is_dir():
                raise ShowError(f"{output.as_posix()}: {parent.as_posix()} is not a directory")
            break
    output.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"Date": None} if suffix == ".svg" else {"Software": None}
    handle, temp = tempfile.mkstemp(prefix=f".{output.name}.", suffix=suffix, dir=output.parent)
    os.close(handle)
    try:
        fig.savefig(temp, format=suffix[1:], metadata=metadata)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temp, 0o666 & ~umask)  # as open() would make it, not mkstemp's 0600
        os.replace(temp, output)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    finally:
        plt.close(fig)
    return output
