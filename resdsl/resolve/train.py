"""A train section's statements (recipe merged with overrides) -> `ir.Train`.

All counts in a train section (milestones, warm-up length, validation interval) are in the unit
of its `length` (iterations or epochs).
"""

from __future__ import annotations

import math

from .. import ir
from .. import syntax as s
from ..diagnostics import Report, Span, did_you_mean
from ..limits import MAX_BATCH
from .values import Values, flag, read_options

PREPROCESS_STEPS = ("pad_to", "subtract_mean", "normalize")
AUGMENT_STEPS = (
    "pad", "random_crop", "hflip", "scale_shorter", "pca_lighting", "random_resized_crop",
    "trivial_augment_wide", "rand_augment", "auto_augment", "random_erasing",
)  # fmt: skip
EVAL_STEPS = ("single_view", "ten_crop", "multiscale", "flip_average")
MIX_STEPS = ("mixup", "cutmix")
STEP_LISTS = {
    "preprocess": PREPROCESS_STEPS,
    "augment": AUGMENT_STEPS,
    "eval": EVAL_STEPS,
    "mix": MIX_STEPS,
}
REQUIRED = ("data", "optimizer", "batch", "length", "eval")
LENGTH_UNITS = ("iterations", "epochs")
OPTIMIZERS = ("sgd", "adamw", "lamb")
LOSSES = ("cross_entropy", "bce")
INTERPOLATIONS = ("nearest", "bilinear", "bicubic")
# steps that need photos of any size, decoded one at a time (torchvision's transforms)
PHOTO_STEPS = (
    "random_resized_crop", "trivial_augment_wide", "rand_augment", "auto_augment",
    "random_erasing",
)  # fmt: skip


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
        self.crop_size = network.input[1] if network else 224
        self.default_resize = round(self.crop_size * 256 / 224)
        readers = {
            "data": self._data,
            "preprocess": self._steps,
            "augment": self._steps,
            "eval": self._steps,
            "optimizer": self._optimizer,
            "batch": self._batch,
            "schedule": self._schedule,
            "warmup": self._warmup,
            "length": self._length,
            "val_split": lambda x: self.values.whole(
                x.args[0], "val_split", span=x.span, minimum=0
            ),
            "validate": lambda x: self.values.whole(
                x.args[0], "the validation interval", span=x.span
            ),
            "loss": self._loss,
            "mix": self._mix,
            "ema": self._ema,
            "precision": lambda x: self.values.symbol(
                x.args[0], ("fp32", "bf16"), "precision", span=x.span
            ),
            "drop_path": self._drop_path,
        }
        self.drop_path: tuple[float, str, Span] | None = None  # for the network: rate, rule, where
        for keyword, statement in st.items():
            value = readers[keyword](statement)
            if keyword == "batch" and value is not None:
                fields["batch"], repeats = value
                if repeats is not None:
                    fields["repeats"] = repeats
            elif keyword == "drop_path":
                continue
            elif value is not None:
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
        kind = self.values.symbol(st.args[0], OPTIMIZERS, "optimizer", span=st.span)
        v = self.values

        def decay(name):
            return lambda o: v.number(o.value, name, span=o.span, low=0)

        readers = {
            "lr": lambda o: v.number(o.value, "lr", span=o.span, low=0, low_open=True),
            "weight_decay": decay("weight_decay"),
            "norm_weight_decay": decay("norm_weight_decay"),
            "bias_weight_decay": decay("bias_weight_decay"),
        }
        if kind == "sgd":
            readers["momentum"] = lambda o: v.number(
                o.value, "momentum", span=o.span, low=0, high=1, high_open=True
            )
            readers["nesterov"] = flag(self.report)
        elif kind in ("adamw", "lamb"):
            readers["betas"] = self._betas
            readers["eps"] = lambda o: v.number(o.value, "eps", span=o.span, low=0, low_open=True)
        if kind == "lamb":
            readers["max_grad_norm"] = decay("max_grad_norm")
        if kind is None:
            return None
        options = read_options(st, readers, self.report)
        if "lr" not in options and not any(o.name.text == "lr" for o in st.options):
            self.report.error("the optimizer has no learning rate", st.span, "add `, lr 0.1`")
            return None
        if self.report.failed:
            return None
        model = {"sgd": ir.SGD, "adamw": ir.AdamW, "lamb": ir.Lamb}[kind]
        return model(span=st.span, **options)

    def _betas(self, option: s.Option):
        values = option.value.values if isinstance(option.value, s.Several) else ()
        if len(values) != 2:
            self.report.error(
                "`betas` takes two numbers", option.span, "write it as `betas 0.9 0.999`"
            )
            return None
        betas = tuple(
            self.values.number(b, "a beta", span=option.span, low=0, high=1, high_open=True)
            for b in values
        )
        return None if None in betas else betas

    def _batch(self, st: s.Statement):
        size = self.values.whole(st.args[0], "batch size", span=st.span, maximum=MAX_BATCH)
        readers = {
            "repeated_augmentation": lambda o: self.values.whole(
                o.value, "repeated_augmentation", span=o.span, maximum=64
            )
        }
        options = read_options(st, readers, self.report)
        return None if size is None else (size, options.get("repeated_augmentation"))

    def _loss(self, st: s.Statement):
        kind = self.values.symbol(st.args[0], LOSSES, "loss", span=st.span)
        v = self.values
        readers = {
            "label_smoothing": lambda o: v.number(
                o.value, "label_smoothing", span=o.span, low=0, high=1, high_open=True
            )
        }
        if kind == "bce":
            readers["target_threshold"] = lambda o: v.number(
                o.value, "target_threshold", span=o.span, low=0, high=1, high_open=True
            )
        if kind is None:
            return None
        options = read_options(st, readers, self.report)
        if kind == "cross_entropy":
            return ir.CrossEntropy(span=st.span, **options)
        return ir.BinaryCrossEntropy(span=st.span, **options)

    def _mix(self, st: s.Statement):
        alphas: dict[str, float] = {}
        for step in st.args:
            name = step.name.text
            if name not in MIX_STEPS:
                self._wrong_step("mix", step, MIX_STEPS)
                continue
            if name in alphas:
                self.report.error(f"`{name}` is given twice", step.span, "keep one")
                continue
            if len(step.args) != 1:
                self.report.error(
                    f"`{name}` takes its alpha: one number, got {len(step.args)} values",
                    step.span,
                    f"write it as `{name} {'0.2' if name == 'mixup' else '1.0'}`",
                )
                continue
            alpha = self.values.number(
                step.args[0], f"the {name} alpha", span=step.span, low=0, low_open=True
            )
            if alpha is not None:
                alphas[name] = alpha
        return ir.Mix(span=st.span, **alphas) if alphas else None

    def _ema(self, st: s.Statement):
        v = self.values
        readers = {
            "decay": lambda o: v.number(
                o.value, "the EMA decay", span=o.span, low=0, high=1, low_open=True,
                high_open=True,
            ),
            "every": lambda o: v.whole(o.value, "the EMA interval", span=o.span),
            "adjust": flag(self.report),
        }  # fmt: skip
        options = read_options(st, readers, self.report)
        if "decay" not in options:
            if not any(o.name.text == "decay" for o in st.options):
                self.report.error(
                    "`ema` needs its decay", st.span, "write it as `ema decay 0.9999, every 1`"
                )
            return None
        return ir.EMA(span=st.span, **options)

    def _drop_path(self, st: s.Statement):
        rate = self.values.number(
            st.args[0], "drop_path", span=st.span, low=0, high=1, high_open=True
        )
        readers = {
            "rule": lambda o: self.values.symbol(
                o.value, ("huang", "timm"), "drop-path rule", span=o.span
            )
        }
        options = read_options(st, readers, self.report)
        if rate is not None:
            self.drop_path = (rate, options.get("rule", "huang"), st.span)

    def _schedule(self, st: s.Statement):
        if st.form == "constant":
            return ir.Constant(span=st.span)
        if st.form == "cosine":
            readers = {
                "min_lr": lambda o: self.values.number(o.value, "min_lr", span=o.span, low=0),
                "per": lambda o: self.values.symbol(
                    o.value, ("iteration", "epoch"), "unit", span=o.span
                ),
            }
            return ir.Cosine(span=st.span, **read_options(st, readers, self.report))
        if st.form == "piecewise":
            return self._piecewise(st)
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

    def _piecewise(self, st: s.Statement):
        points = []
        for point in st.args:
            at, factor = point.values
            x = self.values.number(at, "a point's fraction of training", span=point.span,
                                   low=0, high=1)  # fmt: skip
            y = self.values.number(factor, "a point's factor of the lr", span=point.span, low=0)
            if x is None or y is None:
                return None
            if points and x <= points[-1][0]:
                self.report.error(
                    f"the points of a piecewise schedule must go forward, but {x:g} follows "
                    f"{points[-1][0]:g}",
                    point.span,
                    "write the fractions of training in increasing order",
                )
                return None
            points.append((x, y))
        if len(points) < 2 or points[0][0] != 0 or points[-1][0] != 1:
            self.report.error(
                "a piecewise schedule runs from the start of training to its end: its first "
                "point is at 0 and its last at 1",
                st.span,
                "write it as `schedule piecewise 0: 0.1, 0.25: 1, 1: 0`",
            )
            return None
        return ir.Piecewise(points=tuple(points), span=st.span)

    def _warmup(self, st: s.Statement):
        if st.form == "linear":
            factor = self.values.number(
                st.args[0], "the warm-up's starting factor", span=st.span, low=0, high=1,
                low_open=True,
            )  # fmt: skip
            length = self.values.whole(st.args[1], "the warm-up length", span=st.span)
            if factor is None or length is None:
                return None
            return ir.WarmupLinear(start_factor=factor, length=length, span=st.span)
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
                "mix": "a batch mixing (`mix`)",
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
        keyed = _KEYS.get(name)
        if keyed is not None:
            return self._keyed_step(step, keyed)
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
            case "random_crop":
                size = v.whole(args[0], "random_crop", span=span)
                return None if size is None else ir.RandomCrop(size=size, span=span)
            case "hflip":
                return ir.HFlip(span=span)
            case "scale_shorter":
                (arg,) = args
                if (
                    not isinstance(arg, s.Range)
                    or not isinstance(arg.low, int)
                    or not isinstance(arg.high, int)
                    or arg.low < 1
                    or arg.low > arg.high
                ):
                    self.report.error(
                        "scale_shorter needs a range LOW..HIGH of whole numbers, 1 <= LOW <= HIGH",
                        getattr(arg, "span", span),
                        "write it as `scale_shorter 256..480`",
                    )
                    return None
                return ir.ScaleShorter(low=arg.low, high=arg.high, span=span)
            case "pca_lighting":
                std = v.number(args[0], "pca_lighting std", span=span, low=0, low_open=True)
                return None if std is None else ir.PCALighting(std=std, span=span)
            case "ten_crop":
                resize = v.whole(args[0], "ten_crop resize", span=span) if args else None
                if args and resize is None:
                    return None
                return ir.TenCrop(resize=resize or self.default_resize, span=span)
            case "multiscale":
                scales = [v.whole(a, "a scale", span=span) for a in args]
                if None in scales:
                    return None
                return ir.MultiScale(scales=tuple(scales), span=span)
            case "flip_average":
                return ir.FlipAverage(span=span)
        raise AssertionError(name)  # pragma: no cover

    # steps with named values: `random_resized_crop 176 scale 0.08..1 interpolation bicubic` --
    def _keyed_step(self, step: s.Step, keyed: tuple[int, tuple[str, ...]]):
        """A step of up to `positional` values, then `KEY VALUE...` pairs of the keys given."""
        name, span = step.name.text, step.span
        positional, keys = keyed
        given: list = []
        named: dict[str, list] = {}
        current = None
        for arg in step.args:
            if isinstance(arg, s.Ref) and arg.name in keys:
                if arg.name in named:
                    self.report.error(f"`{arg.name}` is given twice in `{name}`", arg.span)
                    return None
                current = arg.name
                named[current] = []
            elif current is None:
                given.append(arg)
            else:
                named[current].append(arg)
        if len(given) > positional:
            extra = given[positional]
            word = isinstance(extra, s.Ref) and extra.name not in self.values.params
            self.report.error(
                f"unknown {name} option `{extra.name}`"
                if word
                else f"`{name}` takes {_arity_words((0, positional))} before its options",
                extra.span,
                (did_you_mean(extra.name, keys, f"{name} options") if keys else
                 f"`{name}` takes no options") if word else f"write it as `{_STEP_EXAMPLES[name]}`",
            )  # fmt: skip
            return None
        for key, values in named.items():
            stray = next((v for v in values if isinstance(v, s.Ref) and key != "interpolation"
                          and v.name not in self.values.params), None)  # fmt: skip
            if stray is not None:
                self.report.error(
                    f"unknown {name} option `{stray.name}`",
                    stray.span,
                    did_you_mean(stray.name, keys, f"{name} options"),
                )
                return None
            if not values:
                self.report.error(f"`{key}` of `{name}` needs a value", span,
                                  f"write it as `{_STEP_EXAMPLES[name]}`")  # fmt: skip
                return None
        reader = getattr(self, "_" + name)
        return reader(step, given, named)

    def _one(self, step: s.Step, key: str, values: list):
        if len(values) != 1:
            self.report.error(f"`{key}` of `{step.name.text}` takes one value, got "
                              f"{len(values)}", values[-1].span)  # fmt: skip
            return None
        return values[0]

    def _interpolation(self, step: s.Step, named: dict) -> dict:
        if "interpolation" not in named:
            return {}
        value = self._one(step, "interpolation", named["interpolation"])
        if value is None:
            return {"error": True}
        mode = self.values.symbol(value, INTERPOLATIONS, "interpolation", span=step.span)
        return {"interpolation": mode} if mode else {"error": True}

    def _range(self, step: s.Step, key: str, named: dict, low_open: bool = True):
        if key not in named:
            return None
        value = self._one(step, key, named[key])
        if not isinstance(value, s.Range) or value.low > value.high or value.low <= 0:
            self.report.error(
                f"`{key}` of `{step.name.text}` needs a range LOW..HIGH with 0 < LOW <= HIGH",
                getattr(value, "span", step.span),
                f"write it as `{_STEP_EXAMPLES[step.name.text]}`",
            )
            return False
        return (float(value.low), float(value.high))

    def _pad(self, step, given, named):
        if not given:
            self.report.error("`pad` takes the pixels to pad", step.span, "write it as `pad 4`")
            return None
        pixels = self.values.whole(given[0], "pad", span=step.span)
        mode = "zero"
        if len(given) > 1:
            mode = self.values.symbol(given[1], ("zero", "reflect"), "padding", span=step.span)
        if pixels is None or mode is None:
            return None
        return ir.Pad(pixels=pixels, mode=mode, span=step.span)

    def _normalize(self, step, given, named):
        span = step.span
        if given and named:
            self.report.error("`normalize` takes `imagenet`, `dataset`, or `mean ... std ...`",
                              span, "write it as `normalize imagenet`")  # fmt: skip
            return None
        if given:
            source = self.values.symbol(given[0], ("imagenet", "dataset"), "normalization",
                                        span=span)  # fmt: skip
            return None if source is None else ir.Normalize(source=source, span=span)
        if set(named) != {"mean", "std"}:
            self.report.error(
                "`normalize` needs the mean and the standard deviation of each channel",
                span,
                "write it as `normalize imagenet`, `normalize dataset`, or "
                "`normalize mean 0.5 0.5 0.5 std 0.25 0.25 0.25`",
            )
            return None
        mean = [self.values.number(x, "a mean", span=span) for x in named["mean"]]
        std = [self.values.number(x, "a standard deviation", span=span, low=0, low_open=True)
               for x in named["std"]]  # fmt: skip
        if None in mean or None in std:
            return None
        if len(mean) != len(std):
            self.report.error(
                f"`normalize` gives {len(mean)} means but {len(std)} standard deviations",
                span,
                "give one of each per channel",
            )
            return None
        return ir.Normalize(source="given", mean=tuple(mean), std=tuple(std), span=span)

    def _random_resized_crop(self, step, given, named):
        span = step.span
        if not given:
            self.report.error("`random_resized_crop` takes the crop's size", span,
                              "write it as `random_resized_crop 224`")  # fmt: skip
            return None
        size = self.values.whole(given[0], "random_resized_crop", span=span)
        fields = self._interpolation(step, named)
        for key in ("scale", "ratio"):
            value = self._range(step, key, named)
            if value is False:
                return None
            if value is not None:
                fields[key] = value
        if "scale" in fields and fields["scale"][1] > 1:
            self.report.error("the scale of `random_resized_crop` is a fraction of the image's "
                              f"area, at most 1, got {fields['scale'][1]:g}", span)  # fmt: skip
            return None
        if size is None or fields.pop("error", False):
            return None
        return ir.RandomResizedCrop(size=size, span=span, **fields)

    def _trivial_augment_wide(self, step, given, named):
        fields = self._interpolation(step, named)
        if fields.pop("error", False):
            return None
        return ir.TrivialAugmentWide(span=step.span, **fields)

    def _rand_augment(self, step, given, named):
        fields = self._interpolation(step, named)
        v, span = self.values, step.span
        checks = {
            "ops": lambda x: v.whole(x, "the number of RandAugment ops", span=span, maximum=14),
            "magnitude": lambda x: v.number(
                x, "the RandAugment magnitude", span=span, low=0, high=10
            ),  # fmt: skip
            "magnitude_std": lambda x: v.number(
                x, "the RandAugment magnitude_std", span=span, low=0
            ),  # fmt: skip
        }
        for key, check in checks.items():
            if key in named:
                value = self._one(step, key, named[key])
                value = None if value is None else check(value)
                if value is None:
                    return None
                fields[key] = value
        if fields.pop("error", False):
            return None
        return ir.RandAugment(span=span, **fields)

    def _auto_augment(self, step, given, named):
        fields = self._interpolation(step, named)
        if given:
            policy = self.values.symbol(given[0], ("imagenet",), "AutoAugment policy",
                                        span=step.span)  # fmt: skip
            if policy is None:
                return None
        if fields.pop("error", False):
            return None
        return ir.AutoAugment(span=step.span, **fields)

    def _random_erasing(self, step, given, named):
        if not given:
            self.report.error("`random_erasing` takes its probability", step.span,
                              "write it as `random_erasing 0.25`")  # fmt: skip
            return None
        p = self.values.number(given[0], "the random_erasing probability", span=step.span,
                               low=0, high=1, low_open=True)  # fmt: skip
        return None if p is None else ir.RandomErasing(p=p, span=step.span)

    def _single_view(self, step, given, named):
        span = step.span
        fields = self._interpolation(step, named)
        if fields.pop("error", False):
            return None
        resize = None
        if given:
            resize = self.values.whole(given[0], "single_view resize", span=span)
            if resize is None:
                return None
        if "crop_pct" in named:
            if given:
                self.report.error("`single_view` takes a resize or a crop_pct, not both", span,
                                  "keep one")  # fmt: skip
                return None
            value = self._one(step, "crop_pct", named["crop_pct"])
            pct = (
                None
                if value is None
                else self.values.number(value, "crop_pct", span=span, low=0, high=1, low_open=True)
            )
            if pct is None:
                return None
            # timm's: the shorter side resized to floor(crop / crop_pct)
            resize = math.floor(self.crop_size / pct)
        elif resize is None and self.folder:
            resize = self.default_resize
        return ir.SingleView(resize=resize, span=span, **fields)


# steps with named values: (how many values come before the names, the names)
_KEYS = {
    "pad": (2, ()),
    "normalize": (1, ("mean", "std")),
    "random_resized_crop": (1, ("scale", "ratio", "interpolation")),
    "trivial_augment_wide": (0, ("interpolation",)),
    "rand_augment": (0, ("ops", "magnitude", "magnitude_std", "interpolation")),
    "auto_augment": (1, ("interpolation",)),
    "random_erasing": (1, ()),
    "single_view": (1, ("crop_pct", "interpolation")),
}


_STEP_ARITY = {
    "pad_to": (1, 1),
    "subtract_mean": (0, 1),
    "random_crop": (1, 1),
    "hflip": (0, 0),
    "scale_shorter": (1, 1),
    "pca_lighting": (1, 1),
    "ten_crop": (0, 1),
    "multiscale": (1, 64),
    "flip_average": (0, 0),
}
_STEP_EXAMPLES = {
    "pad_to": "pad_to 32",
    "subtract_mean": "subtract_mean per_pixel",
    "pad": "pad 4  (or `pad 4 reflect`)",
    "normalize": "normalize imagenet",
    "random_resized_crop": "random_resized_crop 224 scale 0.08..1 ratio 0.75..1.333",
    "trivial_augment_wide": "trivial_augment_wide",
    "rand_augment": "rand_augment ops 2 magnitude 9 magnitude_std 0.5",
    "auto_augment": "auto_augment imagenet",
    "random_erasing": "random_erasing 0.25",
    "flip_average": "flip_average",
    "mixup": "mixup 0.2",
    "cutmix": "cutmix 1.0",
    "random_crop": "random_crop 32",
    "hflip": "hflip",
    "scale_shorter": "scale_shorter 256..480",
    "pca_lighting": "pca_lighting 0.1",
    "single_view": "single_view  (or `single_view 256`, `single_view crop_pct 0.875`)",
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
    if isinstance(schedule, ir.Cosine) and schedule.per == "epoch" and unit != "epochs":
        report.error(
            "a cosine changed every epoch needs a length in epochs",
            st["schedule"].span,
            "write `length N epochs`, or `schedule cosine` (changed every iteration)",
        )
    warmup = train.warmup
    if isinstance(warmup, ir.WarmupFor | ir.WarmupLinear) and warmup.length >= length:
        report.error(
            f"the warm-up ({warmup.length} {unit}) is not shorter than training ({length} {unit})",
            st["warmup"].span,
            "the schedule runs after the warm-up, in what is left of `length`",
        )
    if warmup is not None and isinstance(schedule, ir.Piecewise):
        report.error(
            "a piecewise schedule has its own rise; it takes no `warmup`",
            st["warmup"].span,
            "remove the `warmup`, or start the schedule low: `schedule piecewise 0: 0.1, "
            "0.2: 1, 1: 0`",
        )
    elif isinstance(warmup, ir.WarmupUntil) and isinstance(schedule, ir.Cosine):
        report.error(
            "a cosine schedule needs to know when it starts; a warm-up `until` the training "
            "error falls ends at no known time",
            st["warmup"].span,
            "write `warmup linear from 0.1 for N` or `warmup lr X for N`",
        )
    elif isinstance(warmup, ir.WarmupLinear) and isinstance(schedule, ir.Plateau):
        report.error(
            "a linear warm-up goes with a cosine, step or constant schedule, not `on_plateau`",
            st["warmup"].span,
            "write `warmup lr X for N` before an `on_plateau` schedule",
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
    _check_normalize(train, channels, st, report)
    for step in train.augment:
        if step.op in PHOTO_STEPS:
            report.error(
                f"`{step.op}` works on photos decoded one at a time; it applies to image folders",
                step.span,
                "on arrays use `pad`, `random_crop`, `hflip` and `pca_lighting` (and `mix`)",
            )
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
            if step.mode == "reflect" and step.pixels >= train_size:
                report.error(
                    f"a reflecting pad must be smaller than the {train_size}x{train_size} images, "
                    f"got {step.pixels}",
                    step.span,
                )
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
        if isinstance(protocol, ir.FlipAverage):
            continue
        if not isinstance(protocol, ir.SingleView) or protocol.resize is not None:
            report.error(
                f"`{protocol.op}` needs photos larger than the input; {data.kind} is evaluated on "
                "the single original view",
                protocol.span,
                "use `eval single_view` (or `flip_average`)",
            )


def _check_normalize(
    train: ir.Train, channels: int, st: dict[str, s.Statement], report: Report
) -> None:
    steps = [s for s in train.preprocess if s.op in ("normalize", "subtract_mean")]
    if len(steps) > 1:
        report.error(
            "`normalize` and `subtract_mean` both centre the images; keep one",
            steps[1].span,
        )
    for step in steps:
        if isinstance(step, ir.Normalize) and step.source != "dataset":
            if len(step.mean) != channels:
                what = "ImageNet's" if step.source == "imagenet" else "these"
                report.error(
                    f"{what} mean and standard deviation are for {len(step.mean)} channels, but "
                    f"the images have {channels}",
                    step.span,
                    "write `normalize dataset`, or one mean and standard deviation per channel",
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
        elif isinstance(step, ir.Normalize) and step.source == "dataset":
            report.error(
                "`normalize dataset` is measured on arrays; image folders are normalized by "
                "values known before training",
                step.span,
                "write `normalize imagenet`, or `normalize mean R G B std R G B`",
            )
    _check_normalize(train, channels, st, report)
    ops = [step.op for step in train.augment]
    if "random_erasing" in ops and ops[-1] != "random_erasing":
        erasing = next(s for s in train.augment if s.op == "random_erasing")
        report.error(
            "random_erasing works on the normalized image, after every other step",
            erasing.span,
            "write it last on the `augment` line",
        )
    resized = [step for step in train.augment if isinstance(step, ir.RandomResizedCrop)]
    if resized:
        for step in train.augment:
            if isinstance(step, ir.ScaleShorter | ir.RandomCrop):
                report.error(
                    f"`{step.op}` and `random_resized_crop` both choose the training crop",
                    step.span,
                    "keep one: `random_resized_crop SIZE` crops and resizes on its own",
                )
        if len(resized) > 1:
            report.error("`random_resized_crop` is given twice", resized[1].span, "keep one")
    for protocol in train.eval:
        if isinstance(protocol, ir.FlipAverage):
            report.error(
                "`flip_average` is for arrays; image folders have `ten_crop` (which flips)",
                protocol.span,
                "use `eval single_view` or `eval ten_crop`",
            )
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
    scaled = any(isinstance(step, ir.ScaleShorter) for step in train.augment)
    if not resized and (not scaled or not crops):
        report.error(
            "image-folder training needs `random_resized_crop SIZE`, or `scale_shorter LOW..HIGH` "
            "and `random_crop SIZE`",
            st.get("augment", st["data"]).span,
            f"add `augment random_resized_crop {height}, hflip` (or `augment scale_shorter "
            f"256..480, random_crop {height}, hflip`)",
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
