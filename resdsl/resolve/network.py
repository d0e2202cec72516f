"""A network's statements -> `ir.Network`. Blocks, stems and shortcuts are looked up by name in
the definitions (the prelude's and the spec's); their options are checked against the
definition's parameters here, and their layers when the network is lowered."""

from __future__ import annotations

import difflib

from pydantic import ValidationError

from .. import ir
from .. import syntax as s
from ..definitions import Definitions, FlatDef
from ..diagnostics import Report, did_you_mean
from ..symbolic import Sym
from .values import Values, flag, read_options

# What a stage gives each of its blocks; a block's options cannot set these.
FROM_THE_STAGE = {
    "planes": "the stage's width (`stage: COUNT x WIDTH`)",
    "stride": "the stage (`, stride 2` on the stage)",
    "dilation": "the stage (`, dilation 2` on the stage)",
    "drop_path": "the network's `drop_path RATE` (rising over the blocks)",
    "index": "the stage (the block's place in it: 0 for the first)",
}
STAGE_OPTIONS = ("stride", "dilation", "shortcut", "block")


class NetworkReader:
    def __init__(self, values: Values, report: Report, definitions: Definitions):
        self.values, self.report, self.definitions = values, report, definitions

    def read(
        self, name: s.Word, single: dict[str, s.Statement], stages: list[s.Statement], span,
        refused: list[s.Statement] = (),
    ) -> ir.Network | None:  # fmt: skip
        """The network; `refused` stages (already reported) are read for their own mistakes."""
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
        stem = self._call("stem", single.get("stem"))
        block = self._call("block", single.get("block"))
        shortcut = self._shortcut(single.get("shortcut"), block, stages)
        init = self._init(single.get("init"), block)
        batchnorm = self._batchnorm(single.get("batchnorm"))
        norm = self._norm(single.get("norm"), single.get("batchnorm"))
        head = self._head(single.get("head"))
        drop_path, drop_path_rule = self._drop_path(single.get("drop_path"), block)
        layout = self._layout(single.get("layout"))
        built_stages = [self._stage(i, st, block, shortcut) for i, st in enumerate(stages)]
        for st in refused:
            self._stage(len(stages), st, block, shortcut)
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
                norm=norm,
                head=head,
                drop_path=drop_path,
                drop_path_rule=drop_path_rule,
                layout=layout,
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

    def _definition(self, kind: str, word) -> FlatDef | None:
        text = word.text if isinstance(word, s.Word) else getattr(word, "name", None)
        table = self.definitions.table(kind)
        if text in table:
            return table[text]
        if (kind, text) in self.definitions.broken:
            return None  # its mistake is reported where it is defined
        if text is None:
            self.report.error(f"`{kind}` needs a name", word.span)
            return None
        self.report.error(
            f"unknown {kind} {'type ' if kind == 'block' else ''}`{text}`",
            word.span,
            self.definitions.unknown_hint(kind, text),
        )
        return None

    def _call(self, kind: str, st: s.Statement | None, options=None) -> ir.Call | None:
        """`block bottleneck, groups 32` (or a stem): the definition and its arguments."""
        if st is None:
            return None
        definition = self._definition(kind, st.args[0])
        options = st.options if options is None else options
        if definition is None:
            return None
        return ir.Call(name=definition.name, args=self._args(definition, options), span=st.span)

    def _args(self, definition: FlatDef, options, stage: bool = False) -> dict:
        known = definition.param_names()
        args = {}
        for option in options:
            name = option.name.text
            if definition.kind == "block" and name in FROM_THE_STAGE:
                self.report.error(
                    f"`{name}` of a block is set by {FROM_THE_STAGE[name]}",
                    option.name.span,
                    "remove it here",
                )
                continue
            if name not in known:
                self._unknown_option(definition, option, stage)
                continue
            if name in args:
                self.report.error(f"`{name}` is given twice", option.span)
                continue
            value = self._value(option)
            if value is not None:
                args[name] = value
        return args

    def _unknown_option(self, definition: FlatDef, option: s.Option, stage: bool) -> None:
        name = option.name.text
        others = [n for n in definition.param_names() if n not in FROM_THE_STAGE]
        choices = ([*STAGE_OPTIONS] if stage else []) + others
        owners = [
            d.name for d in self.definitions.table(definition.kind).values()
            if name in d.param_names()
        ]  # fmt: skip
        if owners and not difflib.get_close_matches(name, choices, n=1, cutoff=0.6):
            hint = (
                f"`{name}` is an option of {', '.join(f'`{o}`' for o in owners)}; options of "
                f"`{definition.name}`: {', '.join(others) or '(none)'}"
            )
        else:
            hint = did_you_mean(
                name, choices, "options" if stage else f"options of `{definition.name}`"
            )
        self.report.error(
            f"unknown option `{name}` for a stage of `{definition.name}` blocks"
            if stage
            else f"unknown option `{name}` for {definition.kind} `{definition.name}`",
            option.name.span,
            hint,
        )

    def _value(self, option: s.Option):
        value = option.value
        if value is None:
            return True
        if isinstance(value, s.Dims):
            return value.values
        if isinstance(value, s.Str):
            self.report.error(f"`{option.name.text}` takes a number or a word", value.span)
            return None
        if isinstance(value, s.Ref) and value.name not in self.values.params:
            return Sym(value.name)
        return self.values.evaluate(value)

    def _shortcut(self, st, block: ir.Call | None, stages: list[s.Statement]) -> str | None:
        residual = block is not None and _residual(self.definitions.blocks[block.name])
        if st is None:
            every_stage_has_one = bool(stages) and all(
                any(o.name.text == "shortcut" for o in stage.options) for stage in stages
            )
            if residual and not every_stage_has_one:
                self.report.error(
                    "residual blocks need a `shortcut`",
                    block.span,
                    "add `shortcut A` (identity, zero-padded), `B` (projection where the shape "
                    "changes), `C` (projection everywhere), `D` (average pool + projection) "
                    "or `none`",
                )
            return None if residual else "none"
        value = self._shortcut_name(st.args[0])
        if block is not None and not residual and value not in (None, "none"):
            self.report.error(
                f"plain blocks have no shortcut, but `shortcut {value}` is given",
                st.span,
                "remove the `shortcut` line, or use a residual block type (basic, bottleneck)",
            )
        return value

    def _shortcut_name(self, word) -> str | None:
        text = word.text if isinstance(word, s.Word) else getattr(word, "name", None)
        if text == "none":
            return "none"
        definition = self._definition("shortcut", word)
        return definition.name if definition else None

    def _init(self, st: s.Statement | None, block: ir.Call | None) -> ir.Init:
        if st is None:
            return ir.Init()
        scheme = self.values.symbol(st.args[0], ("kaiming_normal",), "init scheme", span=st.span)
        fields: dict[str, object] = {}
        if len(st.args) > 1:
            mode = self.values.symbol(st.args[1], ("fan_in", "fan_out"), "init mode", span=st.span)
            if mode:
                fields["mode"] = mode
        options = read_options(st, {"zero_init_residual": flag(self.report)}, self.report)
        if options.get("zero_init_residual") and block is not None:
            definition = self.definitions.blocks[block.name]
            if not _residual(definition):
                self.report.error(
                    "plain blocks have no residual branch to zero-initialise",
                    st.options[0].span,
                    "remove `zero_init_residual`",
                )
            elif not _marks_zero_init(definition.body):
                self.report.error(
                    f"block `{block.name}` marks no batchnorm `zero_init` (pre-activation "
                    "branches end with a convolution, not a BN to zero-initialise)",
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

    def _norm(self, st: s.Statement | None, batchnorm: s.Statement | None) -> ir.Norm:
        """`norm batchnorm` (the default) or `norm groupnorm G, eps E`: what the blocks',
        stems' and head's `batchnorm` layers are, as torchvision's and timm's `norm_layer`."""
        if st is None:
            return ir.Norm()
        kind = self.values.symbol(st.args[0], ("batchnorm", "groupnorm"), "norm", span=st.span)
        if kind is None:
            return ir.Norm()
        value = st.args[1] if len(st.args) > 1 else None
        if kind == "batchnorm":
            if value is not None or st.options:
                self.report.error(
                    "`norm batchnorm` takes no value or options",
                    st.span,
                    "set BN's momentum and eps with `batchnorm momentum M, eps E`",
                )
            return ir.Norm(span=st.span)
        if batchnorm is not None:
            self.report.error(
                "`batchnorm` sets BN's momentum and eps, but this network's norm is groupnorm",
                batchnorm.span,
                "remove the `batchnorm` line (GroupNorm's eps is `norm groupnorm G, eps E`)",
            )
        if value is None:
            self.report.error(
                "`norm groupnorm` needs its number of groups",
                st.span,
                "write `norm groupnorm 32` (timm's and the GroupNorm paper's default)",
            )
            return ir.Norm()
        groups = self.values.whole(value, "the number of groups", span=st.span)
        readers = {
            "eps": lambda o: self.values.number(
                o.value, "GroupNorm epsilon", span=o.span, low=0, low_open=True
            )
        }
        options = read_options(st, readers, self.report)
        if groups is None:
            return ir.Norm()
        return ir.Norm(kind="groupnorm", groups=groups, span=st.span, **options)

    def _head(self, st: s.Statement | None) -> ir.Head:
        """`head dropout 0.2`, or `head NAME, OPTION VALUE, ..., dropout P` with a head defined
        in the language (its layers come between the last stage and the pool)."""
        if st is None:
            return ir.Head()
        options = list(st.options)
        first = options[0] if options else None
        call = None
        if first is not None and first.value is None and first.name.text != "dropout":
            definition = self._definition("head", first.name)
            if definition is None:
                return ir.Head()
            rest = [o for o in options[1:] if o.name.text != "dropout"]
            call = ir.Call(name=definition.name, args=self._args(definition, rest), span=st.span)
            options = [o for o in options[1:] if o.name.text == "dropout"]
        readers = {
            "dropout": lambda o: self.values.number(
                o.value, "dropout", span=o.span, low=0, high=1, high_open=True
            )
        }
        fields = read_options(st._replace(options=tuple(options)), readers, self.report)
        return ir.Head(span=st.span, call=call, **fields)

    def _layout(self, st: s.Statement | None) -> str:
        if st is None:
            return "torchvision"
        return self.values.symbol(st.args[0], ("torchvision", "byobnet"), "layout",
                                  span=st.span) or "torchvision"  # fmt: skip

    def _drop_path(self, st: s.Statement | None, block: ir.Call | None) -> tuple[float, str]:
        """The rate and the rule that spreads it over the blocks (`huang` or `timm`)."""
        if st is None:
            return 0.0, "huang"
        readers = {
            "rule": lambda o: self.values.symbol(
                o.value, ("huang", "timm"), "drop-path rule", span=o.span
            )
        }
        rule = read_options(st, readers, self.report).get("rule", "huang")
        rate = self.values.number(
            st.args[0], "drop_path", span=st.span, low=0, high=1, high_open=True
        )
        if rate and block is not None:
            definition = self.definitions.blocks[block.name]
            if "drop_path" not in definition.param_names():
                self.report.error(
                    f"block `{block.name}` has no `drop_path` parameter to set",
                    st.span,
                    "define the block with a `drop_path = 0` parameter and a "
                    "`drop_path drop_path` layer before its add",
                )
        return rate or 0.0, rule

    def _stage(self, index, st, block: ir.Call | None, shortcut: str | None):
        count_expr, width_expr = st.args
        label = st.label.text if st.label else f"stage{index + 1}"
        title = f"stage {st.label.text if st.label else index + 1}"
        blocks = self.values.whole(count_expr, f"{title}: block count", span=st.span)
        width = self.values.whole(width_expr, f"{title}: width", span=st.span)
        own = [o for o in st.options if o.name.text in STAGE_OPTIONS]
        passed = [o for o in st.options if o.name.text not in STAGE_OPTIONS]
        readers = {
            "stride": lambda o: self.values.whole(o.value, f"{title}: stride", span=o.span),
            "dilation": lambda o: self.values.whole(o.value, f"{title}: dilation", span=o.span),
            "shortcut": lambda o: self._shortcut_name(o.value) if o.value else None,
            "block": lambda o: self._definition("block", o.value) if o.value else None,
        }
        options = read_options(st, readers, self.report, options=own)
        definition = options.get("block")
        if definition is not None:
            stage_block = ir.Call(
                name=definition.name, args=self._args(definition, passed, True), span=st.span
            )
        elif block is not None:
            own_args = self._args(self.definitions.blocks[block.name], passed, True)
            stage_block = block.model_copy(update={"args": {**block.args, **own_args}})
        else:
            stage_block = None
        stage_shortcut = options.get("shortcut", shortcut)
        if stage_block is not None:
            residual = _residual(self.definitions.blocks[stage_block.name])
            if not residual and stage_shortcut not in (None, "none"):
                if "shortcut" in options:
                    self.report.error(
                        "plain blocks have no shortcut",
                        next(o for o in own if o.name.text == "shortcut").span,
                        "remove this option, or use a residual block type",
                    )
                stage_shortcut = "none"
            elif not residual:
                stage_shortcut = "none"
            elif stage_shortcut is None and definition is not None:
                self.report.error(
                    f"{title}: block `{stage_block.name}` needs a `shortcut`",
                    st.span,
                    "add `, shortcut B` to the stage (or a `shortcut` to the network)",
                )
        fields = dict(
            name=label,
            blocks=blocks,
            width=width,
            stride=options.get("stride", 1),
            dilation=options.get("dilation", 1),
            shortcut=stage_shortcut,
            block=stage_block,
        )
        if any(v is None for v in fields.values()):
            return None
        return ir.Stage(span=st.span, **fields)


_MISSING_HINTS = {
    "input": "add `input CxHxW`, e.g. `input 3x224x224`",
    "classes": "add `classes N`, e.g. `classes 1000`",
    "stem": "add `stem imagenet`, `stem cifar`, `stem deep` or `stem tiered`, or define one",
    "block": "add `block basic` or `block bottleneck` (or a preact_/plain_ form)",
}


def _residual(definition: FlatDef) -> bool:
    """Does the block's body hold an `add shortcut` (anywhere, `if`s included)?"""

    def walk(body) -> bool:
        for st in body:
            if isinstance(st, s.Add) and st.shortcut:
                return True
            if isinstance(st, s.If) and (walk(st.then) or walk(st.otherwise or ())):
                return True
        return False

    return walk(definition.body)


def _marks_zero_init(body) -> bool:
    for st in body:
        if isinstance(st, s.Layer) and any(o.name.text == "zero_init" for o in st.options):
            return True
        if isinstance(st, s.If) and (_marks_zero_init(st.then) or
                                     _marks_zero_init(st.otherwise or ())):  # fmt: skip
            return True
    return False


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
