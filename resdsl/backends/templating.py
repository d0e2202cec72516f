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
# the label names of the datasets whose files do not hold them, in label order
CLASS_NAMES = {
    "cifar10": ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                "truck"),
    "fashion_mnist": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                      "Sneaker", "Bag", "Ankle boot"),
    "mnist": tuple(str(digit) for digit in range(10)),
}  # fmt: skip
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
    normalize = next((s for s in train.preprocess if isinstance(s, ir.Normalize)), None)
    photo = [s for s in train.augment if s.op in ir.POLICIES + ("random_resized_crop",)]
    erasing = next((s for s in train.augment if isinstance(s, ir.RandomErasing)), None)
    resized = next((s for s in train.augment if isinstance(s, ir.RandomResizedCrop)), None)
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
        # what Preprocess takes and does (predict.py, export.py)
        "preprocess_input": (
            f"centre crops [N, 3, {net.input[1]}, {net.input[2]}] in [0, 1] (`centre_view`)"
            if kind == "imagefolder"
            else f"images as the dataset gives them, [N, {net.input[0]}, {native}, {native}] in [0, 1]"
        ),
        "preprocess_steps": ", ".join(step_text(s) for s in train.preprocess),
        # what Preprocess takes: the dataset's images, or an image folder's centre crops
        "raw_shape": net.input if kind == "imagefolder" else (net.input[0], native, native),
        "normalize": normalize,  # an ir.Normalize, or None
        "class_names": CLASS_NAMES.get(kind),
        # the steps torchvision's transforms do (on PIL images, in the loader processes)
        "torchvision_steps": bool(photo or erasing),
        "erasing": erasing,
        "train_crop": resized.size if resized else None,  # a random_resized_crop's size
        "repeats": train.repeats,
        "crop": crop,
        "flip": flip,
        "uses_functional": bool(pads) or any(isinstance(s, ir.Pad) for s in train.augment),
        "reflect": any(isinstance(s, ir.Pad) and s.mode == "reflect" for s in train.augment),
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
    # the spec's protocols, and the single view of the test curve and of validation
    views = sorted(set(protocols) | {"single_view"})
    single = protocols.get("single_view")
    mean = any(isinstance(s, ir.SubtractMean) for s in train.preprocess)
    imports = {"os"} | ({"tempfile"} if mean else set())
    if {"ten_crop", "multiscale"} & set(views):
        imports.add("functools")
    return {
        "crop_size": size,
        "eval_views": views,  # the spec's protocols, and single_view
        # the single view's resize (validation uses it too); the resolver's default when unset
        "single_view_resize": single.resize if single else round(size * 256 / 224),
        "single_view_interpolation": single.interpolation if single else "bilinear",
        "centre_view": "single_view" in views or mean,  # the training mean is of single views
        "ten_crop_resize": protocols["ten_crop"].resize if "ten_crop" in protocols else None,
        "scales": list(protocols["multiscale"].scales) if "multiscale" in protocols else None,
        "lighting": any(isinstance(s, ir.PCALighting) for s in train.augment),
        "stdlib_imports": sorted(imports),
    }


NORMALIZE_TEXTS = {
    "imagenet": "normalized by ImageNet's mean and standard deviation",
    "dataset": "normalized by the training split's mean and standard deviation",
    "given": "normalized by the given mean and standard deviation",
}


def step_text(step) -> str:
    return {
        "pad_to": lambda: f"zero-padded to {step.size}x{step.size}",
        "subtract_mean": lambda: f"{step.mode.replace('_', '-')} mean subtracted",
        "normalize": lambda: NORMALIZE_TEXTS[step.source],
        "pad": lambda: (
            f"{step.pixels}-pixel {'reflecting' if step.mode == 'reflect' else 'zero'} pad"
        ),
        "random_crop": lambda: f"random {step.size}x{step.size} crop",
        "hflip": lambda: "horizontal flip",
        "scale_shorter": lambda: f"shorter side random in [{step.low}, {step.high}]",
        "pca_lighting": lambda: f"PCA lighting noise (std {step.std:g})",
        "random_resized_crop": lambda: (
            f"random resized {step.size}x{step.size} crop (area "
            f"{step.scale[0]:g}-{step.scale[1]:g}, {step.interpolation})"
        ),
        "trivial_augment_wide": lambda: "TrivialAugmentWide",
        "rand_augment": lambda: (
            f"RandAugment ({step.ops} ops, magnitude {step.magnitude:g}"
            + (f", std {step.magnitude_std:g}" if step.magnitude_std else "")
            + ")"
        ),
        "auto_augment": lambda: "AutoAugment (ImageNet policy)",
        "random_erasing": lambda: f"random erasing (p {step.p:g})",
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


OPTIMIZER_TITLES = {"sgd": "SGD", "adamw": "AdamW", "lamb": "LAMB"}


def optimizer_text(opt) -> str:
    parts = [f"lr {opt.lr:g}"]
    if opt.kind == "sgd":
        parts.append(f"momentum {opt.momentum:g}")
    else:
        parts.append(f"betas ({opt.betas[0]:g}, {opt.betas[1]:g}), eps {opt.eps:g}")
    parts.append(f"weight decay {opt.weight_decay:g}")
    if opt.norm_weight_decay is not None:
        parts.append(f"{opt.norm_weight_decay:g} on normalization weights")
    if opt.bias_weight_decay is not None:
        parts.append(f"{opt.bias_weight_decay:g} on biases")
    if opt.kind == "lamb" and opt.max_grad_norm:
        parts.append(f"gradients clipped to norm {opt.max_grad_norm:g}")
    text = f"{OPTIMIZER_TITLES[opt.kind]}: {', '.join(parts)}"
    return text + (", Nesterov" if opt.kind == "sgd" and opt.nesterov else "")


def recipe_lines(spec: ir.Spec) -> list[str]:
    """The training section in a few lines, for docstrings and READMEs."""
    train = spec.train
    unit = train.length.unit
    batch = f"batch {train.batch}"
    if train.repeats > 1:
        batch += f" ({train.repeats} augmented copies of each image)"
    lines = [
        f"Recipe: {train.recipe}." if train.recipe else "Recipe: the spec's own.",
        f"Data: {DATASET_TITLES[train.data.kind]}; {pipeline_summary(train)}.",
        f"{optimizer_text(train.optimizer)}; {batch}; {train.length.value} {unit}.",
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
    elif isinstance(schedule, ir.Cosine):
        lines.append(f"Schedule: cosine to {schedule.min_lr:g}, changed every {schedule.per}.")
    elif isinstance(schedule, ir.Piecewise):
        points = ", ".join(f"{x:g}: {y:g}" for x, y in schedule.points)
        lines.append(f"Schedule: lr x a piecewise-linear factor over training ({points}).")
    if isinstance(train.warmup, ir.WarmupUntil):
        lines.append(
            f"Warm-up: lr {train.warmup.lr:g} until the training error is below "
            f"{train.warmup.train_error:g}."
        )
    elif isinstance(train.warmup, ir.WarmupFor):
        lines.append(f"Warm-up: lr {train.warmup.lr:g} for {train.warmup.length} {unit}.")
    elif isinstance(train.warmup, ir.WarmupLinear):
        lines.append(
            f"Warm-up: linear from lr x {train.warmup.start_factor:g} for "
            f"{train.warmup.length} {unit}."
        )
    loss = train.loss
    if loss != ir.CrossEntropy():
        text = "cross entropy" if loss.kind == "cross_entropy" else "binary cross entropy"
        if loss.label_smoothing:
            text += f", label smoothing {loss.label_smoothing:g}"
        if getattr(loss, "target_threshold", None) is not None:
            text += f", targets above {loss.target_threshold:g} made 1"
        lines.append(f"Loss: {text}.")
    if train.mix is not None:
        mixes = [f"{name} (alpha {getattr(train.mix, name):g})" for name in ("mixup", "cutmix")
                 if getattr(train.mix, name) is not None]  # fmt: skip
        lines.append("Mixing: " + " or ".join(mixes) + ", one per batch.")
    if train.ema is not None:
        lines.append(
            f"EMA of the weights: decay {train.ema.decay:g}"
            + (" (adjusted)" if train.ema.adjust else "")
            + f", every {train.ema.every} iterations."
        )
    if train.precision is not None:
        lines.append(f"Precision: {train.precision}.")
    lines.append("Evaluation: " + ", ".join(p.op.replace("_", " ") for p in train.eval) + ".")
    return [
        wrapped for line in lines for wrapped in textwrap.wrap(line, 96, subsequent_indent="  ")
    ]


def uses_lr_scheduler(train: ir.Train) -> bool:
    """Whether the learning rate is the library's scheduler (torch.optim.lr_scheduler, optax's
    schedules) rather than the paper's schedules (a function of the iteration, in Schedule)."""
    return isinstance(train.schedule, ir.Cosine | ir.Piecewise) or isinstance(
        train.warmup, ir.WarmupLinear
    )


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
        # the spec's protocols, and on image folders the single view of the test curve
        "protocol_functions": sorted(
            {p.op for p in train.eval} | ({"single_view"} if data["folder"] else set())
        ),
        "recipe_lines": recipe_lines(spec),
        "schedule_doc": schedule_doc(train),
        "optimizer": train.optimizer,
        # parameter groups: normalization weights or biases decayed apart
        "grouped": train.optimizer.norm_weight_decay is not None
        or train.optimizer.bias_weight_decay is not None,
        "lr_scheduler": uses_lr_scheduler(train),
        "per_epoch": isinstance(train.schedule, ir.Cosine) and train.schedule.per == "epoch",
        "loss": train.loss,
        "mix": train.mix,
        "ema": train.ema,
        "repeats": train.repeats,
        "precision": train.precision,
        "flip_average": any(p.op == "flip_average" for p in train.eval),
        # the data knows its iterations per epoch: for a length in epochs, an adjusted EMA
        "epoch_length": train.length.unit == "epochs" or bool(train.ema and train.ema.adjust),
    }


def schedule_doc(train: ir.Train) -> str:
    schedule, unit = train.schedule, train.length.unit
    if isinstance(schedule, ir.Cosine):
        text = "LR to MIN_LR along half a cosine"
    elif isinstance(schedule, ir.Piecewise):
        text = "LR times the factor of LR_POINTS, linear between them"
    elif isinstance(schedule, ir.MultiStep):
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
    elif isinstance(train.warmup, ir.WarmupLinear):
        text = (
            f"LR x WARMUP_FACTOR rising linearly to LR over the first {train.warmup.length} "
            f"{unit}, then {text}"
        )
    return text
