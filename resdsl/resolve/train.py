"""A train section's statements (recipe merged with overrides) -> `ir.Train`.

All counts in a train section (milestones, warm-up length, validation interval) are in the unit
of its `length` (iterations or epochs).
"""

from __future__ import annotations

from .. import ir
from .. import syntax as s
from ..diagnostics import Report, Span, did_you_mean
from ..limits import MAX_BATCH
from .values import Values, flag, read_options

PREPROCESS_STEPS = ("pad_to", "subtract_mean")
AUGMENT_STEPS = ("pad", "random_crop", "hflip", "scale_shorter", "pca_lighting")
EVAL_STEPS = ("single_view", "ten_crop", "multiscale")
STEP_LISTS = {"preprocess": PREPROCESS_STEPS, "augment": AUGMENT_STEPS, "eval": EVAL_STEPS}
REQUIRED = ("data", "optimizer", "batch", "length", "eval")
LENGTH_UNITS = ("iterations", "epochs")


class TrainReader:
    def __init__(self, values: Values, report: Report):
        self.values, self.report = values, report

    def read(
        self, recipe: str | None, st: dict[str, s.Statement], span: Span, network: ir.Network | None
    ) -> ir.Train | None:
        for keyword in REQUIRED:
            if keyword not in st:
                self.report.error(
                    f"the train section has no `{keyword}`",
                    span,
                    f"add `{_REQUIRED_EXAMPLES[keyword]}`, or build on a recipe: "
                    "`train paper_cifar` or `train paper_imagenet`",
                )
        fields: dict[str, object] = {"recipe": recipe, "span": span}
        data = st.get("data")
        self.folder = bool(data) and getattr(data.args[0], "text", "") == "imagefolder"
        # torchvision's evaluation resize: 256 for a 224 crop
        self.default_resize = round(network.input[1] * 256 / 224) if network else 256
        readers = {
            "data": self._data,
            "preprocess": self._steps,
            "augment": self._steps,
            "eval": self._steps,
            "optimizer": self._optimizer,
            "batch": lambda x: self.values.whole(
                x.args[0], "batch size", span=x.span, maximum=MAX_BATCH
            ),
            "schedule": self._schedule,
            "warmup": self._warmup,
            "length": self._length,
            "val_split": lambda x: self.values.whole(
                x.args[0], "val_split", span=x.span, minimum=0
            ),
            "validate": lambda x: self.values.whole(
                x.args[0], "the validation interval", span=x.span
            ),
        }
        for keyword, statement in st.items():
            value = readers[keyword](statement)
            if value is not None:
                fields["validate_every" if keyword == "validate" else keyword] = value
        if self.report.failed:
            return None
        train = ir.Train(**fields)
        _check_counts(train, st, self.report)
        if network is not None:
            check_data(train, network, st, self.report)
        return None if self.report.failed else train

    # statements ---------------------------------------------------------------------------
    def _data(self, st: s.Statement):
        kind = self.values.symbol(st.args[0], ir.DEFAULT_PATHS, "dataset", span=st.span)
        if kind is None:
            return None
        path = st.args[1].value if len(st.args) > 1 else ir.DEFAULT_PATHS[kind]
        return ir.Dataset(kind=kind, path=path, span=st.span)

    def _optimizer(self, st: s.Statement):
        kind = self.values.symbol(st.args[0], ("sgd",), "optimizer", span=st.span)
        v = self.values
        readers = {
            "lr": lambda o: v.number(o.value, "lr", span=o.span, low=0, low_open=True),
            "momentum": lambda o: v.number(
                o.value, "momentum", span=o.span, low=0, high=1, high_open=True
            ),
            "weight_decay": lambda o: v.number(o.value, "weight_decay", span=o.span, low=0),
            "nesterov": flag(self.report),
        }
        options = read_options(st, readers, self.report)
        if "lr" not in options and not any(o.name.text == "lr" for o in st.options):
            self.report.error("the optimizer has no learning rate", st.span, "add `, lr 0.1`")
            return None
        if kind is None or self.report.failed:
            return None
        return ir.SGD(span=st.span, **options)

    def _schedule(self, st: s.Statement):
        if st.form == "constant":
            return ir.Constant(span=st.span)
        factor = self.values.number(
            st.args[0], "the learning-rate factor", span=st.span, low=0, low_open=True
        )
        if st.form == "at":
            milestones = [self.values.whole(m, "a milestone", span=st.span) for m in st.args[1:]]
            if factor is None or None in milestones:
                return None
            return ir.MultiStep(factor=factor, milestones=tuple(milestones), span=st.span)
        readers = {
            "patience": lambda o: self.values.whole(o.value, "patience", span=o.span),
            "threshold": lambda o: self.values.number(o.value, "threshold", span=o.span, low=0),
        }
        options = read_options(st, readers, self.report)
        if factor is None:
            return None
        return ir.Plateau(factor=factor, span=st.span, **options)

    def _warmup(self, st: s.Statement):
        lr = self.values.number(st.args[0], "the warm-up lr", span=st.span, low=0, low_open=True)
        if st.form == "until":
            error = self.values.number(
                st.args[1], "the training error", span=st.span, low=0, high=1, low_open=True
            )
            if lr is None or error is None:
                return None
            return ir.WarmupUntil(lr=lr, train_error=error, span=st.span)
        length = self.values.whole(st.args[1], "the warm-up length", span=st.span)
        if lr is None or length is None:
            return None
        return ir.WarmupFor(lr=lr, length=length, span=st.span)

    def _length(self, st: s.Statement):
        value = self.values.whole(st.args[0], "the training length", span=st.span)
        unit = self.values.symbol(st.args[1], LENGTH_UNITS, "length unit", span=st.span)
        if value is None or unit is None:
            return None
        return ir.Length(value=value, unit=unit, span=st.span)

    def _steps(self, st: s.Statement):
        allowed = STEP_LISTS[st.keyword]
        steps = []
        for step in st.args:
            name = step.name.text
            if name not in allowed:
                self._wrong_step(st.keyword, step, allowed)
                continue
            built = self._step(step)
            if built is not None:
                steps.append(built)
        return tuple(steps)

    def _wrong_step(self, keyword: str, step: s.Step, allowed: tuple[str, ...]) -> None:
        name = step.name.text
        home = next((k for k, names in STEP_LISTS.items() if name in names), None)
        if home is not None:
            what = {
                "preprocess": "a preprocess step (train and test)",
                "augment": "an augmentation (training only)",
                "eval": "an evaluation protocol",
            }[home]
            self.report.error(
                f"`{name}` is {what}; it does not belong on the `{keyword}` line",
                step.name.span,
                f"move it to the `{home}` line",
            )
            return
        self.report.error(
            f"unknown {keyword} step `{name}`",
            step.name.span,
            did_you_mean(name, allowed, f"{keyword} steps"),
        )

    def _step(self, step: s.Step):
        name, args, v = step.name.text, step.args, self.values
        arity = _STEP_ARITY[name]
        if not arity[0] <= len(args) <= arity[1]:
            self.report.error(
                f"`{name}` takes {_arity_words(arity)}, got {len(args)}",
                step.span,
                f"write it as `{_STEP_EXAMPLES[name]}`",
            )
            return None
        span = step.span
        match name:
            case "pad_to":
                size = v.whole(args[0], "pad_to", span=span)
                return None if size is None else ir.PadTo(size=size, span=span)
            case "subtract_mean":
                mode = "per_pixel"
                if args:
                    mode = v.symbol(args[0], ("per_pixel", "per_channel"), "mean mode", span=span)
                return None if mode is None else ir.SubtractMean(mode=mode, span=span)
            case "pad":
                pixels = v.whole(args[0], "pad", span=span)
                return None if pixels is None else ir.Pad(pixels=pixels, span=span)
            case "random_crop":
                size = v.whole(args[0], "random_crop", span=span)
                return None if size is None else ir.RandomCrop(size=size, span=span)
            case "hflip":
                return ir.HFlip(span=span)
            case "scale_shorter":
                (arg,) = args
                if not isinstance(arg, s.Range) or arg.low < 1 or arg.low > arg.high:
                    self.report.error(
                        "scale_shorter needs a range LOW..HIGH with 1 <= LOW <= HIGH",
                        arg.span,
                        "write it as `scale_shorter 256..480`",
                    )
                    return None
                return ir.ScaleShorter(low=arg.low, high=arg.high, span=span)
            case "pca_lighting":
                std = v.number(args[0], "pca_lighting std", span=span, low=0, low_open=True)
                return None if std is None else ir.PCALighting(std=std, span=span)
            case "single_view" | "ten_crop":
                if args:
                    resize = v.whole(args[0], f"{name} resize", span=span)
                    if resize is None:
                        return None
                elif self.folder or name == "ten_crop":
                    resize = self.default_resize
                else:
                    resize = None
                if name == "single_view":
                    return ir.SingleView(resize=resize, span=span)
                return ir.TenCrop(resize=resize, span=span)
            case "multiscale":
                scales = [v.whole(a, "a scale", span=span) for a in args]
                if None in scales:
                    return None
                return ir.MultiScale(scales=tuple(scales), span=span)
        raise AssertionError(name)  # pragma: no cover


_STEP_ARITY = {
    "pad_to": (1, 1),
    "subtract_mean": (0, 1),
    "pad": (1, 1),
    "random_crop": (1, 1),
    "hflip": (0, 0),
    "scale_shorter": (1, 1),
    "pca_lighting": (1, 1),
    "single_view": (0, 1),
    "ten_crop": (0, 1),
    "multiscale": (1, 64),
}
_STEP_EXAMPLES = {
    "pad_to": "pad_to 32",
    "subtract_mean": "subtract_mean per_pixel",
    "pad": "pad 4",
    "random_crop": "random_crop 32",
    "hflip": "hflip",
    "scale_shorter": "scale_shorter 256..480",
    "pca_lighting": "pca_lighting 0.1",
    "single_view": "single_view",
    "ten_crop": "ten_crop 256",
    "multiscale": "multiscale 224 256 384 480 640",
}
_REQUIRED_EXAMPLES = {
    "data": 'data cifar10 "data/cifar-10-batches-py"',
    "optimizer": "optimizer sgd, lr 0.1, momentum 0.9, weight_decay 1e-4",
    "batch": "batch 128",
    "length": "length 64000 iterations",
    "eval": "eval single_view",
}


def _arity_words(arity: tuple[int, int]) -> str:
    low, high = arity
    if low == high:
        return "no arguments" if low == 0 else f"{low} argument{'s' if low > 1 else ''}"
    if high == 1:
        return "at most 1 argument"
    return f"at least {low} argument{'s' if low > 1 else ''}"


def _check_counts(train: ir.Train, st: dict[str, s.Statement], report: Report) -> None:
    """Milestones, warm-up and validation intervals against the training length."""
    length = train.length.value
    unit = train.length.unit
    schedule = train.schedule
    if isinstance(schedule, ir.MultiStep):
        previous = 0
        for milestone in schedule.milestones:
            if milestone <= previous:
                report.error(
                    f"milestones must increase, but {milestone} follows {previous}",
                    st["schedule"].span,
                )
            elif milestone >= length:
                report.error(
                    f"milestone {milestone} is not before the end of training ({length} {unit})",
                    st["schedule"].span,
                    "milestones are in the unit of `length`",
                )
            previous = milestone
    if isinstance(schedule, ir.Plateau) and train.validate_every is None:
        report.error(
            "`schedule ... on_plateau` needs a validation error to watch",
            st["schedule"].span,
            "add `validate every N` (in the unit of `length`)",
        )
    if train.validate_every is not None and train.validate_every > length:
        report.error(
            f"validation every {train.validate_every} {unit} never happens in {length} {unit} "
            "of training",
            st["validate"].span,
        )
    if isinstance(train.warmup, ir.WarmupFor) and train.warmup.length >= length:
        report.error(
            f"the warm-up ({train.warmup.length} {unit}) is not shorter than training "
            f"({length} {unit})",
            st["warmup"].span,
        )


def check_data(
    train: ir.Train, network: ir.Network, st: dict[str, s.Statement], report: Report
) -> None:
    """Does the data pipeline produce what the network takes?"""
    channels, height, width = network.input
    data = train.data
    where = st["data"].span
    if data.kind == "imagefolder":
        _check_folder(train, network, st, report)
        return
    info = data.info or ir.DatasetInfo(channels, height, network.classes, 10_000, 1_000, "")
    if info.channels != channels:
        report.error(
            f"{data.kind} images have {info.channels} channel{'s' * (info.channels > 1)}, "
            f"but the network's input has {channels}",
            where,
            f"set `input {info.channels}x{height}x{width}`",
        )
    if info.classes != network.classes:
        report.error(
            f"{data.kind} has {info.classes} classes, but the network has {network.classes}",
            where,
            f"set `classes {info.classes}`",
        )
    if train.val_split >= info.train_images:
        report.error(
            f"val_split {train.val_split} leaves no training images ({data.kind} has "
            f"{info.train_images})",
            st["val_split"].span,
        )
    ops = [step.op for step in train.preprocess]
    if (
        "pad_to" in ops
        and "subtract_mean" in ops
        and ops.index("pad_to") > ops.index("subtract_mean")
    ):
        report.error(
            "pad_to must come before subtract_mean: the mean is taken of the padded images",
            st["preprocess"].span,
            "write `preprocess pad_to N, subtract_mean ...`",
        )
    size = info.size
    for step in train.preprocess:
        if isinstance(step, ir.PadTo):
            if step.size < size:
                report.error(
                    f"pad_to {step.size} is smaller than the {size}x{size} images", step.span
                )
            size = step.size
    if (size, size) != (height, width):
        hint = (
            f"add `preprocess pad_to {height}`"
            if size < height == width
            else f"set `input {channels}x{size}x{size}`"
        )
        report.error(
            f"{data.kind} images are {size}x{size} after preprocessing, but the network takes "
            f"{height}x{width}",
            where,
            hint,
        )
        return
    train_size = size
    for step in train.augment:
        if isinstance(step, ir.Pad):
            train_size += 2 * step.pixels
        elif isinstance(step, ir.RandomCrop):
            if step.size > train_size:
                report.error(
                    f"random_crop {step.size} is larger than the {train_size}x{train_size} images",
                    step.span,
                )
            train_size = step.size
        elif isinstance(step, ir.ScaleShorter):
            report.error(
                "scale_shorter resizes photos of any size; it applies to image folders",
                step.span,
                "remove it, or use `pad` and `random_crop` on fixed-size arrays",
            )
        elif isinstance(step, ir.PCALighting) and channels != 3:
            report.error("pca_lighting needs RGB images", step.span, "remove it")
    if train_size != size:
        report.error(
            f"training images are {train_size}x{train_size} after augmentation, but the network "
            f"takes {height}x{width}",
            st["augment"].span,
            f"end the augmentation with `random_crop {height}`",
        )
    for protocol in train.eval:
        if not isinstance(protocol, ir.SingleView) or protocol.resize is not None:
            report.error(
                f"`{protocol.op}` needs photos larger than the input; {data.kind} is evaluated on "
                "the single original view",
                protocol.span,
                "use `eval single_view`",
            )


def _check_folder(
    train: ir.Train, network: ir.Network, st: dict[str, s.Statement], report: Report
) -> None:
    channels, height, width = network.input
    where = st["data"].span
    if channels != 3 or height != width:
        report.error(
            f"image folders give square RGB crops, but the network takes {channels}x{height}x{width}",
            where,
            f"set `input 3x{height}x{height}`",
        )
    for step in train.preprocess:
        if isinstance(step, ir.PadTo):
            report.error("pad_to applies to fixed-size arrays, not image folders", step.span)
    ops = [step.op for step in train.augment]
    if (
        "scale_shorter" in ops
        and "random_crop" in ops
        and ops.index("random_crop") < ops.index("scale_shorter")
    ):
        report.error(
            "random_crop comes before scale_shorter: the crop would be resized again",
            st["augment"].span,
            f"write `augment scale_shorter 256..480, random_crop {height}, ...`",
        )
    crops = [step for step in train.augment if isinstance(step, ir.RandomCrop)]
    if not any(isinstance(step, ir.ScaleShorter) for step in train.augment) or not crops:
        report.error(
            "image-folder training needs `scale_shorter LOW..HIGH` and `random_crop SIZE`",
            st.get("augment", st["data"]).span,
            f"add `augment scale_shorter 256..480, random_crop {height}, hflip`",
        )
    for step in train.augment:
        if isinstance(step, ir.Pad):
            report.error("pad applies to fixed-size arrays, not image folders", step.span)
        elif isinstance(step, ir.RandomCrop) and step.size != height:
            report.error(
                f"random_crop {step.size} differs from the network's input size {height}",
                step.span,
                f"use `random_crop {height}`",
            )
        elif isinstance(step, ir.ScaleShorter) and step.low < height:
            report.error(
                f"scale_shorter {step.low}..{step.high} can give images smaller than the "
                f"{height}x{height} crop",
                step.span,
            )
    for protocol in train.eval:
        resize = getattr(protocol, "resize", None)
        if resize is not None and resize < height:
            report.error(
                f"{protocol.op} resize {resize} is smaller than the {height}x{height} crop",
                protocol.span,
            )
