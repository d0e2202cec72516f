"""The Jinja environment shared by the backends, and facts about a spec that both render."""

from __future__ import annotations

import functools
import textwrap
from pathlib import Path

import jinja2

from .. import __version__, ir
from ..analysis import Analysis
from ..summary import giga, table


def templates_dir() -> Path:
    """`templates/` of a source checkout, or the copy shipped inside the wheel."""
    here = Path(__file__).resolve().parent.parent
    for candidate in (here / "templates", here.parent / "templates"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError("resdsl's templates are missing from this installation")


@functools.cache
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(templates_dir()),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters["thousands"] = lambda n: f"{n:,}"
    env.filters["giga"] = giga
    env.filters["pyfloat"] = repr
    return env


def render_template(name: str, **context) -> str:
    return environment().get_template(name).render(version=__version__, **context)


def runtime_module(header: str) -> str:
    """runtime.py of a trainer: templates/common/runtime.py as it is (plain Python that every
    trainer shares), after the package's header."""
    return header + (templates_dir() / "common" / "runtime.py").read_text(encoding="utf-8")


def readme_context(spec: ir.Spec, analysis: Analysis) -> dict:
    return {"summary_table": table(spec, analysis)}


DATASET_TITLES = {
    "cifar10": "CIFAR-10",
    "cifar100": "CIFAR-100",
    "mnist": "MNIST",
    "fashion_mnist": "Fashion-MNIST",
    "imagefolder": "an image folder",
    "synthetic": "synthetic images",
}
READERS = {
    "cifar10": ("common/readers/cifar.py.jinja", ["pickle"]),
    "cifar100": ("common/readers/cifar.py.jinja", ["pickle"]),
    "mnist": ("common/readers/idx.py.jinja", ["gzip", "math", "struct", "zlib"]),
    "fashion_mnist": ("common/readers/idx.py.jinja", ["gzip", "math", "struct", "zlib"]),
    "synthetic": ("common/readers/synthetic.py.jinja", []),
}


def data_context(spec: ir.Spec) -> dict:
    """What both backends' data pipelines need to know about the spec's data and steps."""
    train, net = spec.train, spec.network
    kind = train.data.kind
    info = train.data.info
    native = info.size if info else net.input[1]
    mean = next((s.mode for s in train.preprocess if isinstance(s, ir.SubtractMean)), None)
    pads, pad_pairs, size = [], [], native
    for step in train.preprocess:
        if isinstance(step, ir.PadTo):
            total = step.size - size
            left = total // 2
            pads.append(f"({left}, {total - left}, {left}, {total - left})")
            pad_pairs.append(f"({left}, {total - left})")
            size = step.size
    crop = flip = None
    train_size = size
    for step in train.augment:
        if isinstance(step, ir.Pad):
            train_size += 2 * step.pixels
        elif isinstance(step, ir.RandomCrop):
            crop = {"size": step.size, "slack": train_size - step.size}
            train_size = step.size
        elif isinstance(step, ir.HFlip):
            flip = True
    reader, imports = READERS.get(kind, (None, []))
    imports = sorted(set(imports) | ({"os", "tempfile"} if mean else set()))
    folder = folder_context(spec) if kind == "imagefolder" else {}
    return folder | {
        "kind": kind,
        "title": DATASET_TITLES[kind],
        "path": train.data.path,
        "folder": kind == "imagefolder",
        "reader": reader,
        "stdlib_imports": folder.get("stdlib_imports", imports),
        "pads_before_mean": pads,  # F.pad's (left, right, top, bottom)
        "pad_pairs_before_mean": pad_pairs,  # np.pad's (before, after), the same for H and W
        "padded_size": size,
        "native_size": native,
        "before_mean_doc": f", zero-padded to {size}x{size}" if pads else "",
        "mean": mean,
        "augment": list(train.augment),
        "crop": crop,
        "flip": flip,
        "uses_functional": bool(pads) or any(isinstance(s, ir.Pad) for s in train.augment),
        "summary": pipeline_summary(train),
        "preprocess_text": ", ".join(step_text(s) for s in train.preprocess) or "none",
        "augment_text": ", ".join(step_text(s) for s in train.augment) or "none",
        "description": pipeline_description(train, size),
        "augment_doc": augment_doc(train),
    }


def folder_context(spec: ir.Spec) -> dict:
    """What an image-folder pipeline needs beyond `data_context`: its geometry and its views."""
    train, size = spec.train, spec.network.input[1]
    protocols = {p.op: p for p in train.eval}
    views = sorted(set(protocols) | ({"single_view"} if train.validate_every else set()))
    single = protocols.get("single_view")
    mean = any(isinstance(s, ir.SubtractMean) for s in train.preprocess)
    imports = {"os"} | ({"tempfile"} if mean else set())
    if {"ten_crop", "multiscale"} & set(views):
        imports.add("functools")
    return {
        "crop_size": size,
        "eval_views": views,  # the spec's protocols, and single_view for validation
        # the single view's resize (validation uses it too); the resolver's default when unset
        "single_view_resize": single.resize if single else round(size * 256 / 224),
        "centre_view": "single_view" in views or mean,  # the training mean is of single views
        "ten_crop_resize": protocols["ten_crop"].resize if "ten_crop" in protocols else None,
        "scales": list(protocols["multiscale"].scales) if "multiscale" in protocols else None,
        "lighting": any(isinstance(s, ir.PCALighting) for s in train.augment),
        "stdlib_imports": sorted(imports),
    }


def step_text(step) -> str:
    return {
        "pad_to": lambda: f"zero-padded to {step.size}x{step.size}",
        "subtract_mean": lambda: f"{step.mode.replace('_', '-')} mean subtracted",
        "pad": lambda: f"{step.pixels}-pixel zero pad",
        "random_crop": lambda: f"random {step.size}x{step.size} crop",
        "hflip": lambda: "horizontal flip",
        "scale_shorter": lambda: f"shorter side random in [{step.low}, {step.high}]",
        "pca_lighting": lambda: f"PCA lighting noise (std {step.std:g})",
    }[step.op]()


def pipeline_summary(train: ir.Train) -> str:
    parts = [step_text(s) for s in train.preprocess]
    if train.augment:
        parts.append("for training " + ", ".join(step_text(s) for s in train.augment))
    return "; ".join(parts) if parts else "no preprocessing"


def augment_doc(train: ir.Train) -> str:
    if not train.augment:
        return ""
    text = ", then ".join(step_text(s) for s in train.augment)
    return text[0].upper() + text[1:] + "."


def pipeline_description(train: ir.Train, size: int) -> str:
    if train.data.kind == "imagefolder":
        return "JPEG and PNG files are decoded in worker processes."
    return (
        "Images are scaled to [0, 1]. The training split is kept on the training device, where\n"
        "each batch is drawn and augmented with tensor operations: no loader processes, and on a\n"
        "GPU no training images copied from the host. The evaluation splits stay on the host\n"
        "and go over a batch at a time."
    )


def recipe_lines(spec: ir.Spec) -> list[str]:
    """The training section in a few lines, for docstrings and READMEs."""
    train = spec.train
    opt = train.optimizer
    unit = train.length.unit
    lines = [
        f"Recipe: {train.recipe}." if train.recipe else "Recipe: the spec's own.",
        f"Data: {DATASET_TITLES[train.data.kind]}; {pipeline_summary(train)}.",
        f"SGD: lr {opt.lr:g}, momentum {opt.momentum:g}, weight decay {opt.weight_decay:g}"
        f"{', Nesterov' if opt.nesterov else ''}; batch {train.batch}; "
        f"{train.length.value} {unit}.",
    ]
    schedule = train.schedule
    if isinstance(schedule, ir.MultiStep):
        lines.append(
            f"Schedule: lr x {schedule.factor:g} at {', '.join(map(str, schedule.milestones))} "
            f"{unit}."
        )
    elif isinstance(schedule, ir.Plateau):
        lines.append(
            f"Schedule: lr x {schedule.factor:g} when the validation error has not improved by "
            f"{schedule.threshold:g} for {schedule.patience} validations."
        )
    if isinstance(train.warmup, ir.WarmupUntil):
        lines.append(
            f"Warm-up: lr {train.warmup.lr:g} until the training error is below "
            f"{train.warmup.train_error:g}."
        )
    elif isinstance(train.warmup, ir.WarmupFor):
        lines.append(f"Warm-up: lr {train.warmup.lr:g} for {train.warmup.length} {unit}.")
    lines.append("Evaluation: " + ", ".join(p.op.replace("_", " ") for p in train.eval) + ".")
    return [
        wrapped for line in lines for wrapped in textwrap.wrap(line, 96, subsequent_indent="  ")
    ]


def train_context(spec: ir.Spec) -> dict:
    train = spec.train
    data = data_context(spec)
    data["loader_class"] = "FolderData" if data["folder"] else "ArrayData"
    return {
        "train": train,
        "data": data,
        "schedule": train.schedule,
        "warmup": train.warmup,
        "eval_names": [protocol.op for protocol in train.eval],
        "protocol_functions": sorted(
            {p.op for p in train.eval} | ({"single_view"} if train.validate_every else set())
        ),
        "recipe_lines": recipe_lines(spec),
        "schedule_doc": schedule_doc(train),
    }


def schedule_doc(train: ir.Train) -> str:
    schedule, unit = train.schedule, train.length.unit
    if isinstance(schedule, ir.MultiStep):
        text = f"LR, times {schedule.factor:g} at each milestone"
    elif isinstance(schedule, ir.Plateau):
        text = f"LR, times {schedule.factor:g} when the validation error plateaus"
    else:
        text = "LR throughout"
    if isinstance(train.warmup, ir.WarmupUntil):
        text = (
            f"WARMUP_LR until the training error is below {train.warmup.train_error:g}, then {text}"
        )
    elif isinstance(train.warmup, ir.WarmupFor):
        text = f"WARMUP_LR for the first {train.warmup.length} {unit}, then {text}"
    return text
