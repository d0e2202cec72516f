"""A network's statements -> `ir.Network`."""

from __future__ import annotations

from pydantic import ValidationError

from .. import ir
from .. import syntax as s
from ..diagnostics import Report
from .values import Values, flag, read_options

# block type -> (layers, pre-activation, plain: no shortcut)
BLOCK_TYPES = {
    "basic": ("basic", False, False),
    "bottleneck": ("bottleneck", False, False),
    "preact_basic": ("basic", True, False),
    "preact_bottleneck": ("bottleneck", True, False),
    "plain_basic": ("basic", False, True),
    "plain_bottleneck": ("bottleneck", False, True),
}
STEM_WIDTHS = {"imagenet": 64, "cifar": 16, "deep": 64}
SHORTCUTS = ("A", "B", "C", "D", "none")


class NetworkReader:
    def __init__(self, values: Values, report: Report):
        self.values, self.report = values, report

    def read(
        self, name: s.Word, single: dict[str, s.Statement], stages: list[s.Statement], span
    ) -> ir.Network | None:
        for keyword in ("input", "classes", "stem", "block"):
            if keyword not in single:
                self.report.error(
                    f"network `{name.text}` has no `{keyword}`", span, _MISSING_HINTS[keyword]
                )
        if not stages:
            self.report.error(
                f"network `{name.text}` has no stages", span, "add `stage NAME: COUNT x WIDTH`"
            )
        input_shape = self._input(single.get("input"))
        classes = self._classes(single.get("classes"))
        stem = self._stem(single.get("stem"))
        block, plain = self._block(single.get("block"))
        every_stage_has_one = bool(stages) and all(
            any(o.name.text == "shortcut" for o in st.options) for st in stages
        )
        shortcut = self._shortcut(single.get("shortcut"), plain, block, every_stage_has_one)
        init = self._init(single.get("init"), plain, block is not None and block.preact)
        batchnorm = self._batchnorm(single.get("batchnorm"))
        head = self._head(single.get("head"))
        built_stages = [self._stage(i, st, block, shortcut, plain) for i, st in enumerate(stages)]
        _check_stage_names(stages, self.report)
        if (
            init.zero_init_residual
            and built_stages
            and all(st is not None and st.shortcut == "none" for st in built_stages)
        ):
            self.report.error(
                "no stage has a shortcut, so there is no residual branch to zero-initialise",
                init.span,
                "remove `zero_init_residual`",
            )
        if self.report.failed:
            return None
        try:
            return ir.Network(
                name=name.text,
                input=input_shape,
                classes=classes,
                stem=stem,
                stages=tuple(built_stages),
                init=init,
                batchnorm=batchnorm,
                head=head,
                span=span,
            )
        except ValidationError as error:  # pragma: no cover - the checks above come first
            self.report.error(f"invalid network: {error.errors()[0]['msg']}", span)
            return None

    # one reader per statement -----------------------------------------------------------------
    def _input(self, st: s.Statement | None):
        if st is None:
            return None
        (dims,) = st.args
        if any(v < 1 for v in dims.values):
            self.report.error(f"input sizes must be positive, got {dims}", dims.span)
            return None
        return dims.values

    def _classes(self, st: s.Statement | None):
        if st is None:
            return None
        return self.values.whole(st.args[0], "the number of classes", span=st.span)

    def _stem(self, st: s.Statement | None):
        if st is None:
            return None
        kind = self.values.symbol(st.args[0], STEM_WIDTHS, "stem", span=st.span)
        options = read_options(
            st,
            {"width": lambda o: self.values.whole(o.value, "stem width", span=o.span)},
            self.report,
        )
        if kind is None:
            return None
        return ir.Stem(kind=kind, width=options.get("width", STEM_WIDTHS[kind]), span=st.span)

    def _block(self, st: s.Statement | None) -> tuple[ir.Block | None, bool]:
        if st is None:
            return None, False
        kind = self.values.symbol(st.args[0], BLOCK_TYPES, "block type", span=st.span)
        if kind is None:
            read_options(st, _block_option_readers(self.values, st), self.report)
            return None, False
        layers, preact, plain = BLOCK_TYPES[kind]
        readers = _block_option_readers(self.values, st)
        if layers == "basic":
            for name in ("expansion", "width_per_group", "stride_at"):
                readers[name] = _bottleneck_only(self.report, kind)
        options = read_options(st, readers, self.report)
        if layers == "bottleneck":
            options.setdefault("expansion", 4)
        block = ir.Block(kind=layers, preact=preact, span=st.span, **options)
        return block, plain

    def _shortcut(self, st, plain: bool, block: ir.Block | None, every_stage_has_one: bool):
        if st is None:
            if block is not None and not plain and not every_stage_has_one:
                self.report.error(
                    "residual blocks need a `shortcut`",
                    block.span,
                    "add `shortcut A` (identity, zero-padded), `B` (projection where the shape "
                    "changes), `C` (projection everywhere), `D` (average pool + projection) "
                    "or `none`",
                )
            return "none" if plain else None
        value = self.values.symbol(st.args[0], SHORTCUTS, "shortcut option", span=st.span)
        if plain and value is not None:
            self.report.error(
                f"plain blocks have no shortcut, but `shortcut {value}` is given",
                st.span,
                "remove the `shortcut` line, or use a residual block type (basic, bottleneck)",
            )
        return value

    def _init(self, st: s.Statement | None, plain: bool, preact: bool) -> ir.Init:
        if st is None:
            return ir.Init()
        scheme = self.values.symbol(st.args[0], ("kaiming_normal",), "init scheme", span=st.span)
        fields: dict[str, object] = {}
        if len(st.args) > 1:
            mode = self.values.symbol(st.args[1], ("fan_in", "fan_out"), "init mode", span=st.span)
            if mode:
                fields["mode"] = mode
        options = read_options(st, {"zero_init_residual": flag(self.report)}, self.report)
        if options.get("zero_init_residual") and (plain or preact):
            self.report.error(
                "plain blocks have no residual branch to zero-initialise"
                if plain
                else "pre-activation branches end with a convolution, not a BN to zero-initialise",
                st.options[0].span,
                "remove `zero_init_residual`",
            )
        fields.update(options)
        return ir.Init(scheme=scheme or "kaiming_normal", span=st.span, **fields)

    def _batchnorm(self, st: s.Statement | None) -> ir.BatchNorm:
        if st is None:
            return ir.BatchNorm()
        readers = {
            "momentum": lambda o: self.values.number(
                o.value, "BN momentum", span=o.span, low=0, high=1, low_open=True
            ),
            "eps": lambda o: self.values.number(
                o.value, "BN epsilon", span=o.span, low=0, low_open=True
            ),
        }
        return ir.BatchNorm(span=st.span, **read_options(st, readers, self.report))

    def _head(self, st: s.Statement | None) -> ir.Head:
        if st is None:
            return ir.Head()
        readers = {
            "dropout": lambda o: self.values.number(
                o.value, "dropout", span=o.span, low=0, high=1, high_open=True
            )
        }
        return ir.Head(span=st.span, **read_options(st, readers, self.report))

    def _stage(self, index, st, block, shortcut, plain):
        count_expr, width_expr = st.args
        label = st.label.text if st.label else f"stage{index + 1}"
        title = f"stage {st.label.text if st.label else index + 1}"
        blocks = self.values.whole(count_expr, f"{title}: block count", span=st.span)
        width = self.values.whole(width_expr, f"{title}: width", span=st.span)
        readers = {
            "stride": lambda o: self.values.whole(o.value, f"{title}: stride", span=o.span),
            "shortcut": lambda o: self._stage_shortcut(o, plain),
        }
        options = read_options(st, readers, self.report)
        fields = dict(
            name=label,
            blocks=blocks,
            width=width,
            stride=options.get("stride", 1),
            shortcut=options.get("shortcut", shortcut),
            block=block,
        )
        if any(v is None for v in fields.values()):
            return None
        return ir.Stage(span=st.span, **fields)

    def _stage_shortcut(self, option: s.Option, plain: bool):
        value = self.values.symbol(option.value, SHORTCUTS, "shortcut option", span=option.span)
        if plain and value is not None:
            self.report.error(
                "plain blocks have no shortcut",
                option.span,
                "remove this option, or use a residual block type",
            )
        return value


_MISSING_HINTS = {
    "input": "add `input CxHxW`, e.g. `input 3x224x224`",
    "classes": "add `classes N`, e.g. `classes 1000`",
    "stem": "add `stem imagenet`, `stem cifar` or `stem deep`",
    "block": "add `block basic` or `block bottleneck` (or a preact_/plain_ form)",
}


def _block_option_readers(values: Values, st: s.Statement) -> dict:
    return {
        "groups": lambda o: values.whole(o.value, "groups", span=o.span),
        "width_per_group": lambda o: values.whole(o.value, "width_per_group", span=o.span),
        "expansion": lambda o: values.whole(o.value, "expansion", span=o.span),
        "stride_at": lambda o: _stride_at(values, o),
    }


def _stride_at(values: Values, option: s.Option):
    if isinstance(option.value, s.Dims) and str(option.value) in ("1x1", "3x3"):
        return str(option.value)
    values.report.error(
        "stride_at must be `1x1` (the paper) or `3x3` (torchvision)",
        getattr(option.value, "span", option.span),
    )
    return None


def _bottleneck_only(report: Report, kind: str):
    def read(option: s.Option):
        report.error(
            f"`{option.name.text}` applies to bottleneck blocks, not `{kind}`",
            option.span,
            "remove it, or use `block bottleneck`",
        )

    return read


def _check_stage_names(stages: list[s.Statement], report: Report) -> None:
    seen: dict[str, s.Statement] = {}
    for st in stages:
        if st.label is None:
            continue
        first = seen.setdefault(st.label.text, st)
        if first is not st:
            report.error(
                f"two stages are named `{st.label.text}`",
                st.label.span,
                f"the first is at line {first.span.line}; stage names must be unique",
            )
