"""Network IR + definitions -> the network's classes, and its blocks built from them.

Lowering decides which classes a network needs and what varies between their blocks: one class
per block definition of the stages (two when some stages have no shortcut: `PlainBasicBlock`),
and one per definition used as a layer. A parameter whose value differs between a class's blocks
(the stage's width, the stride of a stage's first block, ...) is a constructor argument; the
others are folded in. Each class's form is interpreted once (`interpret.py`), with its
constructor arguments symbolic.

Every block of the network is then that form with its block's values substituted
(`instantiate`): the concrete layers, shapes, parameters and multiply-adds that analysis folds
over, and `show` draws. Identical blocks (same class, values and input shape) are built once and
shared, so a 1,202-layer network costs a few blocks' work.
"""

from __future__ import annotations

from typing import NamedTuple

from . import ir
from .definitions import Definitions, FlatDef, preact_block
from .diagnostics import Report, Span
from .forms import (
    AddNode,
    BlockClass,
    BranchNode,
    CallNode,
    CheckNode,
    EachNode,
    Form,
    GroupNode,
    KeepNode,
    LayerNode,
    LetNode,
    WhenNode,
    each_lists,
    guard,
    walk,
)
from .interpret import Interpreter, Where, argument_problem, place
from .layers import KINDS, LayerError, Shape, through, vanishes
from .limits import MAX_ALL_LAYERS, MAX_LAYERS
from .names import PRINTER_NAMES, Namespace, stage_attribute
from .symbolic import EvalError, Named, Op, Var, concrete, constant, text, type_of


class Layer(NamedTuple):
    """One primitive layer. `name` is its attribute (None: a parameter-free layer no one names)."""

    name: str | None
    kind: str
    args: dict
    inp: Shape
    out: Shape
    params: int
    macs: int
    source: object = None
    parts: int | None = None  # the parts of its output, when it is split (`out` is one part's)


class Group(NamedTuple):
    """Layers numbered 0, 1, ... under one name (an nn.Sequential)."""

    name: str
    layers: tuple[Layer, ...]
    inp: Shape
    out: Shape


class Keep(NamedTuple):
    """`keep NAME`: where a value is kept, for `multiply NAME` and `add NAME` (and the depth)."""

    name: str


class Each(NamedTuple):
    """`each NAME { ... }` as built: the items of each part, in order (a list per name)."""

    name: str
    parts: tuple[tuple, ...]  # each part's items: Layer | Group | Block
    inp: Shape  # a part's shape
    out: Shape

    @property
    def layers(self) -> tuple:
        return tuple(item for part in self.parts for item in part)


class Add(NamedTuple):
    """The residual add: the main branch plus `shortcut` (None: the identity)."""

    shortcut: Shortcut | None
    out: Shape


class Branch(NamedTuple):
    """A projecting shortcut reads the main branch here."""


class Shortcut(NamedTuple):
    """A shortcut's layers, as built for one block (numbered when more than one)."""

    definition: str
    layers: tuple[Layer, ...]
    inp: Shape
    out: Shape

    @property
    def projects(self) -> bool:
        return any(KINDS[layer.kind].weighted for layer in _layers(self.layers))


class Block(NamedTuple):
    """One block: its definition, the arguments it was built with, and its items in order."""

    definition: str
    args: dict
    items: tuple  # Layer | Group | Block (a block used as a layer, `name` set) | Add | Branch
    inp: Shape
    out: Shape
    name: str | None = None  # when used as a layer of another block
    shortcut_name: str | None = None  # the network's shortcut option for this block
    size: int = 0  # layers inside, those of blocks used as layers and shortcuts included
    parts: int | None = None  # the parts of its output, when it ends split (used as a layer)

    def layers(self):
        """Every primitive layer inside, shortcuts included, in order."""
        yield from _layers(self.items)

    @property
    def residual(self) -> bool:
        return any(isinstance(item, Add) for item in self.items)

    @property
    def depth(self) -> int:
        """Weighted layers on the main path, as the paper counts: convolutions and fully
        connected layers. Shortcuts are beside it, and so is an attention: the layers between a
        value kept (or the input) and the `multiply` or `add` that reads it again (an SE gate);
        one part of an `each` stands for its parts, which run side by side."""
        return _depth(self.items)


def _depth(items) -> int:
    count, kept = 0, {"input": 0}
    for item in items:
        if isinstance(item, Keep):
            kept[item.name] = count
        elif isinstance(item, Layer) and KINDS[item.kind].gate:
            count = kept.get(item.args["value"], count)
        elif isinstance(item, Layer):
            count += item.kind in ("conv", "linear")
        elif isinstance(item, Group):
            count += _depth(item.layers)
        elif isinstance(item, Each):
            count += _depth(item.parts[0])
        elif isinstance(item, Block):
            count += item.depth
    return count


def _layers(items):
    for item in items:
        if isinstance(item, Layer):
            yield item
        elif isinstance(item, Group):
            yield from _layers(item.layers)
        elif isinstance(item, Each):
            yield from _layers(item.layers)
        elif isinstance(item, Block):
            yield from item.layers()
        elif isinstance(item, Add) and item.shortcut is not None:
            yield from _layers(item.shortcut.layers)


class Stage(NamedTuple):
    ir: ir.Stage
    attr: str  # layer1, layer2, ...
    blocks: tuple[Block, ...]
    out: Shape
    cls: BlockClass | None = None


class Lowered(NamedTuple):
    network: ir.Network
    preact: bool
    stem: Block
    stages: tuple[Stage, ...]
    head: tuple[Layer, ...]  # [bn_final, relu] (pre-activation), avgpool, [dropout], fc
    definitions: Definitions
    classes: tuple[BlockClass, ...] = ()  # blocks used as layers first
    stem_form: Form | None = None  # a form of constants: the stem is printed inline
    head_form: tuple[LayerNode, ...] = ()
    shortcut_forms: dict = {}  # the shortcut options the stages use -> their forms
    neck: Block | None = None  # a head definition's layers, between the last stage and the pool
    neck_form: Form | None = None  # a form of constants: printed inline, as the stem

    @property
    def features(self) -> int:
        return self.stages[-1].out[0]

    def blocks(self):
        for stage in self.stages:
            yield from stage.blocks

    @property
    def stochastic(self) -> bool:
        """Whether training draws random numbers inside the network (dropout, drop path)."""
        return any(KINDS[kind].random for kind in self.kinds)

    @property
    def kinds(self) -> set[str]:
        """The kinds of the network's layers (blocks used as layers included)."""
        layers = [*self.stem.layers(), *(lay for b in self.blocks() for lay in b.layers()),
                  *(self.neck.layers() if self.neck else ()), *self.head]  # fmt: skip
        return {layer.kind for layer in layers}

    @property
    def stage_classes(self) -> list[BlockClass]:
        return [c for c in self.classes if c.role == "stage"]

    def layer_class(self, definition: str) -> BlockClass:
        return next(
            c for c in self.classes if c.role == "layer" and c.definition.name == definition
        )


_MISSING = ("missing",)  # a parameter a block does not give (its default applies)


class Lowering:
    def __init__(self, network: ir.Network, definitions: Definitions, report: Report):
        self.network, self.definitions, self.report = network, definitions, report
        self.interpreter = Interpreter(definitions, report, network.norm)
        self.cache: dict[tuple, Block | None] = {}
        self.preact = False
        self.work = 0  # layers built so far (identical blocks are built once)
        self.classes: dict[tuple, BlockClass] = {}
        self.class_names = Namespace(PRINTER_NAMES | {"Block", "ResNet"})
        self.shortcut_forms: dict[str, Form] = {}
        self.failed = False

    # the whole network --------------------------------------------------------------------------
    def run(self) -> Lowered | None:
        net = self.network
        if not self._preact():
            return None
        stem_form = self._stem()
        if stem_form is None:
            return None
        neck_sites = self._neck_sites()
        if neck_sites is None:
            return None
        stage_classes = self._stage_classes()
        if stage_classes is None or not self._shortcuts():
            return None
        sites = [*stem_form.calls, *neck_sites,
                 *(c for form in self.shortcut_forms.values() for c in form.calls)]  # fmt: skip
        if not self._layer_classes(stage_classes, sites):
            return None
        stem = self.instantiate(stem_form, {}, net.input, None, net.stem.span, "")
        if stem is None:
            return None
        if not self._depth_is_sane(stem):
            return None
        stages, shape, dilation, index = [], stem.out, 1, 0
        total = sum(stage.blocks for stage in net.stages)
        for number, stage in enumerate(net.stages, start=1):
            if stage.stride > 1 and min(shape[1:]) == 1:
                self.report.error(
                    f"{stage.title} cannot subsample: its input is already {shape[1]}x{shape[2]}",
                    stage.span,
                    "the feature map vanishes; use a larger input, or stride 1 here",
                )
                return None
            cls = stage_classes[number - 1]
            blocks = []
            for i in range(stage.blocks):
                index += 1
                block = self._stage_block(stage, cls, i, dilation, index, total, shape)
                if block is None:
                    return None
                blocks.append(block)
                shape = block.out
            dilation = stage.dilation
            stages.append(Stage(stage, stage_attribute(net.layout, number - 1), tuple(blocks),
                                shape, cls))  # fmt: skip
        if not self._finish_classes(stages):
            return None
        neck_form = neck = None
        if net.head.call is not None:
            neck_form, neck = self._neck(shape)
            if neck is None:
                return None
            shape = neck.out
        try:
            head_form, head = self._head(shape, stem_form)
        except LayerError as problem:  # the final norm of a pre-activation network
            self.report.error(f"the head's norm: {problem.message}", net.norm.span, problem.hint)
            return None
        classes = self._ordered_classes()
        return Lowered(net, self.preact, stem, tuple(stages), head, self.definitions,
                       classes, stem_form, head_form, dict(self.shortcut_forms), neck,
                       neck_form)  # fmt: skip

    def _preact(self) -> bool:
        net = self.network
        first = self.definitions.blocks.get(net.stages[0].block.name)
        self.preact = first is not None and preact_block(first)
        mixed = [
            st for st in net.stages
            if st.block.name in self.definitions.blocks
            and preact_block(self.definitions.blocks[st.block.name]) != self.preact
        ]  # fmt: skip
        if mixed:
            self.report.error(
                f"{mixed[0].title} mixes pre-activation and post-activation blocks",
                mixed[0].span,
                "a network's blocks either all start with a batchnorm (pre-activation) or none do",
            )
            return False
        return True

    def _stem(self):
        net = self.network
        definition = self.definitions.stems[net.stem.name]
        where = Where(self.report, net.stem.span)
        form = self.interpreter.run(definition, dict(net.stem.args), net.input[0], self.preact,
                                    where)  # fmt: skip
        if form is None or not self._printable(form, where, "stem"):
            return None
        return form

    def _neck_sites(self) -> tuple | None:
        """The blocks a head definition uses as layers (its input's channels not yet known)."""
        call = self.network.head.call
        if call is None:
            return ()
        where = Where(self.report, call.span)
        form = self.interpreter.run(self.definitions.heads[call.name], dict(call.args),
                                    Var("inplanes", "int"), self.preact, where)  # fmt: skip
        return None if form is None else form.calls

    def _neck(self, shape: Shape):
        """A head definition's layers after the last stage (timm's `final_conv`), built once as
        the stem is."""
        call = self.network.head.call
        definition = self.definitions.heads[call.name]
        where = Where(self.report, call.span)
        form = self.interpreter.run(definition, dict(call.args), shape[0], self.preact, where)
        if form is None or not self._printable(form, where, "stem"):
            return None, None
        return form, self.instantiate(form, {}, shape, None, call.span, "")

    # classes ----------------------------------------------------------------------------------
    def _stage_args(self, stage: ir.Stage, i: int, dilation: int, index: int, total: int) -> dict:
        """A block's arguments: the stage's (planes, stride, dilation, and `index`, the block's
        place in its stage, where the block has that parameter), the rule's drop rate, and the
        options written after `block`."""
        args = dict(stage.block.args)
        args["planes"] = stage.width
        args["stride"] = stage.stride if i == 0 else 1
        if stage.dilation != 1 or dilation != 1:
            args["dilation"] = dilation if i == 0 else stage.dilation
        if "index" in self.definitions.blocks[stage.block.name].param_names():
            args["index"] = i  # the block's place in its stage, when the block asks for it
        if self.network.drop_path:
            if self.network.drop_path_rule == "timm":  # 0 for the first block, RATE for the last
                args["drop_path"] = self.network.drop_path * (index - 1) / max(1, total - 1)
            else:  # Huang et al. 2016: RATE * l / L for block l of L
                args["drop_path"] = self.network.drop_path * index / total
        return args

    def _stage_classes(self) -> list[BlockClass] | None:
        """The class of each stage's blocks, each class's form interpreted once."""
        net = self.network
        members: dict[tuple, list[tuple[ir.Stage, list[dict]]]] = {}
        keys = []
        dilation, index, total = 1, 0, sum(stage.blocks for stage in net.stages)
        for stage in net.stages:
            definition = self.definitions.blocks[stage.block.name]
            generic = self.interpreter.generic(definition.name)
            if generic is None:
                return None
            unknown = sorted(set(self._stage_args(stage, 0, dilation, 1, 1))
                             - set(definition.param_names()))  # fmt: skip
            if unknown == ["stride"] and stage.stride == 1:
                self.report.error(
                    f"block `{definition.name}` has no parameter `stride`, which a stage gives "
                    "its first block",
                    stage.span,
                    f"add `stride = 1` to its parameters (`block {definition.name}(planes, "
                    "stride = 1)`) and use it, as a stage with `, stride 2` would",
                )
                return None
            if unknown:
                self.report.error(
                    f"block `{definition.name}` has no parameter `{unknown[0]}`, which the "
                    "network sets",
                    stage.span,
                    f"add `{unknown[0]} = ...` to its parameters, or change the network",
                )
                return None
            plain = stage.shortcut == "none" or not any(
                isinstance(n, AddNode) for n in walk(generic.nodes))  # fmt: skip
            key = (definition.name, plain)
            samples = [self._stage_args(stage, i, dilation, index + i + 1, total)
                       for i in range(min(stage.blocks, 2))]  # fmt: skip
            members.setdefault(key, []).append((stage, samples))
            keys.append(key)
            index += stage.blocks
            dilation = stage.dilation
        forced = {"planes", "stride"}
        if any(stage.dilation != 1 for stage in net.stages):
            forced.add("dilation")
        if net.drop_path:
            forced.add("drop_path")
        for key, stages in members.items():
            definition = self.definitions.blocks[key[0]]
            samples = [args for _, arg_list in stages for args in arg_list]
            stage = stages[0][0]
            where = Where(self.report, stage.span, f"{stage.title}: ")
            cls = self._class(definition, "stage", samples, forced, where, residual=not key[1])
            if cls is None:
                return None
            cls.shortcuts = tuple(sorted({st.shortcut for st, _ in stages} - {"none"}))
            self.classes[("stage", key)] = cls
        return [self.classes[("stage", key)] for key in keys]

    def _class(self, definition: FlatDef, role: str, samples: list[dict], forced: set[str],
               where: Where, residual: bool = False) -> BlockClass | None:  # fmt: skip
        """The class of `definition` whose blocks are given the arguments `samples`."""
        variables, given = [], {}
        for param in definition.params:
            name = param.name.text
            values = {_key(args.get(name, _MISSING)) for args in samples}
            dynamic = any(isinstance(args.get(name), Var | Op) for args in samples)
            if name in forced or dynamic or len(values) > 1:
                variables.append(name)
                given[name] = Var(name, _joined([type_of(args[name]) for args in samples
                                                 if name in args] or ["any"]))  # fmt: skip
            elif name in samples[0]:
                given[name] = samples[0][name]
        named = frozenset({"expansion"}) if role == "stage" else frozenset()
        form = self.interpreter.run(definition, given, Var("inplanes", "int"), self.preact,
                                    where, named)  # fmt: skip
        if form is None or not self._printable(form, where, "block", split=role == "layer"):
            return None
        named = next((n for n in walk(form.nodes) if isinstance(n, LayerNode | GroupNode | CallNode)
                      and n.attr == "norm"), None)  # fmt: skip
        if named is not None and (role == "stage" or any(
                isinstance(n, CallNode) or (isinstance(n, LayerNode) and n.kind == "batchnorm")
                for n in walk(form.nodes))):  # fmt: skip
            self.report.error(
                f"{where.context}block `{definition.name}` names a layer `norm` "
                f"({place(named.source.span)}), the name of the network's norm in a block with a "
                "batchnorm, or in a stage",
                where.span,
                "name it otherwise; `norm` is free in a block used as a layer without a batchnorm",
            )
            return None
        defined_residual = any(isinstance(n, AddNode) for n in walk(form.nodes))
        name = self.class_names.take(class_name(definition.name, residual, defined_residual))
        defaults = self.interpreter.defaults(definition)
        for variable in variables:  # a float argument's default reads as one: 0.0
            if variable in defaults and form.params[variable].type == "float":
                defaults[variable] = float(defaults[variable])
        return BlockClass(name, definition, role, residual and defined_residual, form, variables,
                          _spelling(definition, form), defaults)  # fmt: skip

    def _layer_classes(self, stage_classes: list[BlockClass], others=()) -> bool:
        """The classes of blocks used as layers (by the stages' blocks, and the `others` calls:
        the stem's, the shortcuts', the head's). What varies between the calls of one decides
        its constructor arguments, so a class is made once all of its callers have theirs."""
        callers: dict[str, set[str]] = {}  # from the definitions' own forms: every possible call
        reachable = set()
        todo = [c.definition.name for c in stage_classes] + [c.definition for c in others]
        while todo:
            name = todo.pop()
            if name in reachable:
                continue
            reachable.add(name)
            for call in self.interpreter.generic(name).calls:
                callers.setdefault(call.definition, set()).add(name)
                todo.append(call.definition)
        sites: dict[str, list[CallNode]] = {}
        for call in others:
            sites.setdefault(call.definition, []).append(call)
        done: set[str] = set()  # definitions whose layer class is made
        made = list(dict.fromkeys(stage_classes))
        while made:
            for cls in made:
                for call in cls.form.calls:
                    sites.setdefault(call.definition, []).append(call)
            made = []
            for name in list(sites):
                if name in done or any(c in callers and c not in done for c in callers[name]):
                    continue
                where = Where(self.report, self.network.stages[0].span,
                              f"block `{name}` used as a layer: ")  # fmt: skip
                cls = self._class(self.definitions.blocks[name], "layer",
                                  [call.args for call in sites[name]], set(), where)  # fmt: skip
                if cls is None:
                    return False
                self.classes[("layer", name)] = cls
                done.add(name)
                made.append(cls)
        return True

    def _shortcuts(self) -> bool:
        for name in sorted({st.shortcut for st in self.network.stages} - {"none"}):
            definition = self.definitions.shortcuts[name]
            stage = next(st for st in self.network.stages if st.shortcut == name)
            where = Where(self.report, stage.span, f"{stage.title}: ")
            given = {"outplanes": Var("outplanes", "int"), "stride": Var("stride", "int")}
            form = self.interpreter.run(definition, given, Var("inplanes", "int"), self.preact,
                                        where)  # fmt: skip
            if form is None or not self._printable(form, where, "shortcut"):
                return False
            self.shortcut_forms[name] = form
        return True

    def _printable(self, form: Form, where: Where, role: str, split: bool = False) -> bool:
        """An `if` on a value known per block only is code the printers can write in a shortcut
        (around all of it, or between two layers); in a block, the classes differ instead. Only
        a block used as a layer (`split`) may end with a split value."""
        definition = form.definition
        if form.parts is not None and not split:
            self.report.error(
                f"{where.context}{definition.kind} `{definition.name}` ends with a value split "
                f"into {text(form.parts)} parts",
                where.span or definition.span,
                "join them (`sum parts`, `concat`); only a block used as a layer may give parts",
            )
            return False
        for node in walk(form.nodes):
            if isinstance(node, EachNode) and role == "block":
                unknown = [attr for attr, size in each_lists(node).items() if size is None]
                if unknown:
                    self.report.error(
                        f"{where.context}{definition.kind} `{definition.name}`, each "
                        f"({place(node.source.span)}): `{unknown[0]}` is under an `if` that does "
                        "not choose the first parts",
                        where.span,
                        f"a layer named inside `each` is a list: put it under `if "
                        f"{node.name} < N` (the first N parts), or name it outside `each`",
                    )
                    return False
            if not isinstance(node, WhenNode):
                continue
            guarded = guard(form)
            whole = role == "shortcut" and guarded is not None and guarded[1] is node
            single = role == "shortcut" and len(node.then) == 1 == len(node.otherwise) and all(
                isinstance(n, LayerNode) for n in (*node.then, *node.otherwise))  # fmt: skip
            if whole or single:
                continue
            condition = text(node.condition)
            if role == "block":  # the class holds what either side builds; forward chooses
                inside = [n for n in walk((*node.then, *node.otherwise))
                          if isinstance(n, AddNode | BranchNode | EachNode | KeepNode)]  # fmt: skip
                if not inside:
                    continue
                what = {AddNode: "`add shortcut`", BranchNode: "`branch`", EachNode: "`each`",
                        KeepNode: "`keep`"}[type(inside[0])]  # fmt: skip
                message = (
                    f"an `if` of {definition.kind} `{definition.name}` ({place(node.source.span)}) "
                    f"on `{condition}`, which differs between its blocks, holds {what}"
                )  # fmt: skip
                hint = f"keep {what} outside the `if` (or write two blocks)"
            else:
                message = (
                    f"shortcut `{definition.name}`: an `if` on `{condition}` ({place(node.source.span)}) "
                    "must hold the whole shortcut, or choose between one layer and another"
                )  # fmt: skip
                hint = "use `identity` to hold a place (as shortcut D does)"
            self.report.error(f"{where.context}{message}", where.span, hint)
            return False
        return True

    def _ordered_classes(self) -> tuple[BlockClass, ...]:
        """Blocks used as layers first (deepest first), then the stages' classes."""
        layers = [c for key, c in self.classes.items() if key[0] == "layer"]
        return tuple(reversed(layers)) + tuple(
            c for k, c in self.classes.items() if k[0] == "stage"
        )

    def _finish_classes(self, stages: list[Stage]) -> bool:
        """What each class's blocks share: the stages' `expansion`, what a downsample reads."""
        for cls in self.classes.values():
            if cls.role != "stage":
                continue
            ratios = {block.out[0] / block.args["planes"] for block in cls.instances}
            ratio = ratios.pop()
            if ratios or not float(ratio).is_integer():
                stage = next(s for s in stages if s.cls is cls)
                self.report.error(
                    f"block `{cls.definition.name}`: its output channels are not a fixed "
                    "multiple of `planes` (torchvision's `expansion`), so its stages cannot be "
                    "built in a loop",
                    stage.ir.span,
                    "give it `expansion = N` and N * planes output channels (docs/language.md, "
                    '"Defining blocks")',
                )
                return False
            cls.expansion = int(ratio)
            if any(isinstance(v, Named) and v.value != cls.expansion
                   for v in _values(cls.form)):  # fmt: skip
                # `expansion` names another number than the class's: it is only a value here
                given = {k: v.value if isinstance(v, Named) else v
                         for k, v in cls.form.params.items()}  # fmt: skip
                cls.form = self.interpreter.run(cls.definition, given, cls.form.inp, self.preact,
                                                Where(self.report))  # fmt: skip
            cls.reads = _reads(cls)
        return True

    # blocks -----------------------------------------------------------------------------------
    def _depth_is_sane(self, stem: Block) -> bool:
        """Refuse absurd depths (`--set n=10**9`) from each stage's first block, before building
        every block."""
        net = self.network
        depth, size, shape, dilation = stem.depth + 1, stem.size, stem.out, 1
        classes = [self.classes[("stage", key)] for key in self._stage_keys()]
        for stage, cls in zip(net.stages, classes, strict=True):
            args = self._stage_args(stage, 0, dilation, 1, 1)
            args.pop("drop_path", None)
            block = self._block(cls, args, shape, stage.shortcut, stage.span,
                                f"{stage.title}, block 1: ")  # fmt: skip
            if block is None:
                return False
            depth += stage.blocks * block.depth
            size += stage.blocks * block.size
            shape, dilation = block.out, stage.dilation
        if depth > MAX_LAYERS:
            self.report.error(
                f"network `{net.name}` would have {depth:,} layers; resdsl refuses "
                f"networks deeper than {MAX_LAYERS:,}",
                net.span,
                "check the block counts (and any --set values)",
            )
            return False
        if size > MAX_ALL_LAYERS:
            self.too_many(size)
            return False
        return True

    def _stage_keys(self) -> list[tuple]:
        keys = []
        for stage in self.network.stages:
            definition = self.definitions.blocks[stage.block.name]
            generic = self.interpreter.generic(definition.name)
            plain = stage.shortcut == "none" or not any(
                isinstance(n, AddNode) for n in walk(generic.nodes))  # fmt: skip
            keys.append((definition.name, plain))
        return keys

    def _stage_block(self, stage, cls, i, dilation, index, total, shape) -> Block | None:
        args = self._stage_args(stage, i, dilation, index, total)
        block = self._block(cls, args, shape, stage.shortcut, stage.span,
                            f"{stage.title}, block {i + 1}: ")  # fmt: skip
        if block is not None:
            cls.instances.append(block)
        return block

    def _block(self, cls: BlockClass, given: dict, shape: Shape, shortcut: str | None,
               span: Span, context: str) -> Block | None:  # fmt: skip
        """A block of `cls` for the arguments `given` (the others take their defaults)."""
        where = Where(self.report, span, context)
        env = self.interpreter.bind(cls.definition, given, shape[0], self.preact, where)
        if env is None:
            return None
        values = {name: env[name] for name in cls.variables}
        args = {p.name.text: constant(env[p.name.text]) for p in cls.definition.params}
        return self.instantiate(cls.form, values, shape, shortcut, span, context, args,
                                name=None)  # fmt: skip

    def instantiate(self, form: Form, values: dict, shape: Shape, shortcut: str | None,
                    span: Span, context: str, args: dict | None = None,
                    name: str | None = None) -> Block | None:  # fmt: skip
        """The concrete block of `form` once its constructor arguments have `values`."""
        key = (id(form), tuple(sorted(values.items())), shape, shortcut, name)
        if key not in self.cache:
            built = _Build(self, form, span, context, shape, shortcut)
            items = built.run(values)
            block = None
            if items is not None:
                if args is None:
                    args = {k: constant(v) for k, v in form.params.items()}
                block = Block(form.definition.name, args, tuple(items), shape, built.shape, name,
                              shortcut, built.size, built.parts)  # fmt: skip
            self.cache[key] = block
        return self.cache[key]

    def worked(self) -> bool:
        """One more layer built: building stops past MAX_ALL_LAYERS."""
        self.work += 1
        if self.work > MAX_ALL_LAYERS:
            if self.work == MAX_ALL_LAYERS + 1:
                self.too_many(self.work)
            return False
        return True

    def too_many(self, size: int) -> None:
        self.report.error(
            f"network `{self.network.name}` would have more than {MAX_ALL_LAYERS:,} layers, "
            "counting those of blocks used as layers",
            self.network.span,
            "check how many times each block uses another",
        )

    def _head(self, shape: Shape, stem_form: Form) -> tuple[tuple[LayerNode, ...], tuple]:
        """The head, from kinds like every layer: [BN, ReLU], the pool, [dropout], the fc."""
        net = self.network
        features = shape[0]
        stem_relu = next((n.attr for n in stem_form.nodes if isinstance(n, LayerNode)
                          and n.kind == "relu" and not n.labelled), None)  # fmt: skip
        taken = {n.attr for n in stem_form.nodes if isinstance(n, LayerNode | GroupNode)}
        nodes = []
        if self.preact:
            norm, args = self.interpreter.normalised(KINDS["batchnorm"], {"zero_init": False})
            nodes.append(("bn_final", norm.name, args, features))
            nodes.append((stem_relu or Namespace(taken).take("relu"), "relu", {}, features))
        nodes.append(("avgpool", "global_avg_pool", {}, features))
        if net.head.dropout:
            nodes.append(("dropout", "dropout", {"p": net.head.dropout}, features))
        nodes.append(("fc", "linear", {"channels": net.classes}, net.classes))
        form, layers, channels = [], [], features
        for attr, kind_name, args, out in nodes:
            kind = KINDS[kind_name]
            form.append(LayerNode(attr, kind_name, args, channels, out, True, None))
            new = kind.shape(args, shape)
            layers.append(Layer(attr if kind.weighted or attr != "relu" else None, kind_name,
                                args, shape, new, kind.params(args, shape, new),
                                kind.macs(args, shape, new)))  # fmt: skip
            shape, channels = new, out
        return tuple(form), tuple(layers)


class _Build:
    """One block built from its form: values substituted, layers checked and measured."""

    def __init__(self, lowering: Lowering, form: Form, span: Span, context: str, shape: Shape,
                 shortcut: str | None):  # fmt: skip
        self.lowering, self.form, self.span, self.context = lowering, form, span, context
        self.report = lowering.report
        self.input = self.shape = shape
        self.parts = None  # the number of parts of a split value (None: not split)
        self.kept: dict = {}  # `keep NAME` -> (shape, parts)
        self.shortcut = shortcut
        self.size = 0  # layers, those of blocks used as layers and of shortcuts included
        self.failed = False

    def error(self, message: str, hint: str | None = None, at=None) -> None:
        definition = self.form.definition
        where = f"{definition.kind} `{definition.name}`"
        if at is not None:
            label = f" `{at.label.text}`" if getattr(at, "label", None) else ""
            kind = at.kind.text if hasattr(at, "kind") else type(at).__name__.lower()
            where += f", {kind}{label} ({place(at.span)})"
        self.report.error(f"{self.context}{where}: {message}", self.span, hint)
        self.failed = True

    def value(self, value, env: dict, at=None):
        try:
            return concrete(value, env)
        except EvalError as problem:
            self.error(problem.message, problem.hint, at)
            return None

    def run(self, values: dict) -> list | None:
        env = dict(values)
        env.setdefault("inplanes", self.input[0])
        items: list = []
        self.nodes(self.form.nodes, env, items)
        if not self.failed and self.size > MAX_ALL_LAYERS:
            self.lowering.too_many(self.size)
            self.failed = True
        return None if self.failed else items

    def nodes(self, nodes, env: dict, items: list) -> None:
        for node in nodes:
            if self.failed:
                return
            if isinstance(node, LetNode):
                env[node.name] = self.value(node.value, env, node.source)
            elif isinstance(node, KeepNode):
                self.kept[node.name] = (self.shape, self.parts)
                items.append(Keep(node.name))
            elif isinstance(node, EachNode):
                self.each(node, env, items)
            elif isinstance(node, CheckNode):
                if self.value(node.condition, env, node.source) is False:
                    self.error(node.message, at=node.source)
            elif isinstance(node, WhenNode):
                taken = self.value(node.condition, env, node.source)
                self.nodes(node.then if taken else node.otherwise, env, items)
            elif isinstance(node, LayerNode):
                layer = self.layer(node, env)
                if layer is not None:
                    items.append(layer)
            elif isinstance(node, GroupNode):
                inner: list = []
                start = self.shape
                self.nodes(node.nodes, env, inner)
                items.append(Group(node.attr, tuple(inner), start, self.shape))
            elif isinstance(node, CallNode):
                self.call(node, env, items)
            elif isinstance(node, BranchNode):
                if self.shortcut != "none":
                    items.append(Branch())
            elif isinstance(node, AddNode):
                self.add(env, items)

    def layer(self, node: LayerNode, env: dict) -> Layer | None:
        kind = KINDS[node.kind]
        args = {}
        for name, value in node.args.items():
            if name == "kernel":
                value = tuple(self.value(v, env, node.source) for v in value)
            else:
                value = self.value(value, env, node.source)
            if self.failed:
                return None
            problem = argument_problem(kind, name, value)
            if problem:
                hint = (
                    "its channels come from the block's arguments: raise the stage width (or the "
                    "option that divides it)" if name == "channels" else None
                )  # fmt: skip
                self.error(problem, hint, node.source)
                return None
            args[name] = value
        if vanishes(kind, args):
            return None
        try:
            if kind.gate:
                out = self.combined(kind, args)
                if out is None:
                    return None
            else:
                self.parts, factor = through(kind, args, self.parts)
                out = kind.shape(args, self.shape)
                out = (out[0] * factor, *out[1:])
        except LayerError as problem:
            self.error(problem.message, problem.hint, node.source)
            return None
        if not self.lowering.worked():
            self.failed = True
            return None
        self.size += 1
        inp, self.shape = self.shape, out
        return Layer(node.attr if node.labelled else None, node.kind, args, inp, out,
                     kind.params(args, inp, out), kind.macs(args, inp, out), node.source,
                     self.parts)  # fmt: skip

    def combined(self, kind, args: dict) -> Shape | None:
        """`multiply NAME` / `add NAME`: the value and a kept one (or the input), broadcast
        where one has 1 channel or a 1x1 map."""
        name = args["value"]
        if name == "previous" and name not in self.kept:
            raise LayerError("`add previous` in part 0, which has no part before it",
                             "write it under `if i > 0` (i: the part's number)")  # fmt: skip
        other = self.input if name == "input" else self.kept[name][0]
        out = _broadcast(self.shape, other)
        if out is None:
            got, want = _shape(self.shape), _shape(other)
            if name == "input" and kind.name == "multiply":
                raise LayerError(f"`multiply` multiplies the block's input ({want}) by {got}",
                                 "a gate keeps the input's channels, and its size or 1x1")  # fmt: skip
            raise LayerError(
                f"`{kind.name} {name}` combines {got} with `{name}` ({want})",
                "the two need equal channels (or one of 1) and equal sizes (or one of 1x1)",
            )
        return out

    def each(self, node: EachNode, env: dict, items: list) -> None:
        start, parts = self.shape, self.parts
        built, shapes = [], []
        for i in range(parts):
            self.shape, self.parts = start, None
            self.kept.pop("previous", None)
            if shapes:  # `add previous` reads the part before
                self.kept["previous"] = (shapes[-1], None)
            inner: list = []
            self.nodes(node.nodes, dict(env, **{node.name: i}), inner)
            if self.failed:
                return
            built.append(tuple(inner))
            shapes.append(self.shape)
        if len(set(shapes)) > 1:
            found = ", ".join(f"part {i}: {_shape(shape)}" for i, shape in enumerate(shapes))
            self.error(f"the parts of `each` come out unlike ({found})",
                       "each part must give one shape, so that they stack again",
                       node.source)  # fmt: skip
            return
        items.append(Each(node.name, tuple(built), start, self.shape))
        self.parts = parts
        self.kept.pop("previous", None)

    def call(self, node: CallNode, env: dict, items: list) -> None:
        lowering = self.lowering
        cls = lowering.classes[("layer", node.definition)]
        given = {name: self.value(value, env, node.source) for name, value in node.args.items()}
        if self.failed:
            return
        where = Where(self.report, self.span, self.context)
        bound = lowering.interpreter.bind(cls.definition, given, self.shape[0], lowering.preact,
                                          where)  # fmt: skip
        if bound is None:
            self.failed = True
            return
        values = {v: constant(bound[v]) for v in cls.variables}
        args = {p.name.text: constant(bound[p.name.text]) for p in cls.definition.params}
        block = lowering.instantiate(cls.form, values, self.shape, None, self.span, self.context,
                                     args, node.attr)  # fmt: skip
        if block is None:
            self.failed = True
            return
        if block not in cls.instances:
            cls.instances.append(block)
        self.size += block.size
        items.append(block)
        self.shape, self.parts = block.out, block.parts

    def add(self, env: dict, items: list) -> None:
        name = self.shortcut
        if name is None:
            self.error("the network gives no `shortcut` for this block's `add shortcut`")
            return
        if name == "none":
            return
        form = self.lowering.shortcut_forms[name]
        stride = self.value(self.form.params.get("stride", 1), env)
        values = {"inplanes": self.input[0], "outplanes": self.shape[0], "stride": stride}
        built = _Build(self.lowering, form, self.span, self.context, self.input, None)
        layers = built.run(values)
        if layers is None:
            self.failed = True
            return
        self.size += built.size
        if built.shape != self.shape:
            self.error(
                f"shortcut {name} gives {_shape(built.shape)}, but the main branch gives "
                f"{_shape(self.shape)}",
                "the shortcut must match the branch's channels and size: choose a shortcut "
                "that projects (B, C, D) or change the block",
            )
            return
        shortcut = Shortcut(name, tuple(layers), self.input, built.shape) if layers else None
        items.append(Add(shortcut, built.shape))


def class_name(definition: str, residual: bool, defined_residual: bool) -> str:
    words = "".join(part.capitalize() for part in definition.split("_"))
    if not words.endswith(("Block", "neck")):
        words += "Block"
    return words if residual or not defined_residual else "Plain" + words


def _spelling(definition: FlatDef, form: Form) -> dict[str, str]:
    """Python names for the parameters and values of a definition (those kept with `keep` and
    the part numbers of `each` included): its own where free."""
    own = [p.name.text for p in definition.params] + list(form.lets)
    own += [n.name for n in walk(form.nodes) if isinstance(n, KeepNode | EachNode)]
    taken = set(PRINTER_NAMES) | set(own)
    spelling = {}
    for name in own:
        if name in PRINTER_NAMES:
            candidate = name + "_"
            while candidate in taken:
                candidate += "_"
            taken.add(candidate)
            spelling[name] = candidate
        else:
            spelling[name] = name
    return spelling


def _values(form: Form):
    yield from form.params.values()
    for node in walk(form.nodes):
        if isinstance(node, LayerNode | CallNode):
            yield from node.args.values()
            yield node.out


def _reads(cls: BlockClass) -> str:
    """What a class's downsample reads: `x` (the block's input), `branch` (the main branch at
    `branch`), or `mixed` (projections read the branch, option A's padding the input)."""
    has_branch = any(isinstance(item, Branch) for b in cls.instances for item in b.items)
    if not has_branch:
        return "x"
    kinds = {
        add.shortcut.projects
        for block in cls.instances
        for add in block.items
        if isinstance(add, Add) and add.shortcut is not None
    }
    if kinds == {False}:
        return "x"
    return "branch" if kinds == {True} else "mixed"


def _key(value):
    return (type(value).__name__, value)


def _joined(types: list[str]) -> str:
    kinds = set(types)
    if len(kinds) == 1:
        return kinds.pop()
    return "float" if kinds <= {"int", "float"} else "any"


def _broadcast(a: Shape, b: Shape) -> Shape | None:
    """The shape of an elementwise product or sum of `a` and `b`; None where they do not
    broadcast (channels equal or one of them 1; sizes equal or one of them 1x1)."""
    if a[0] != b[0] and 1 not in (a[0], b[0]):
        return None
    if a[1:] != b[1:] and (1, 1) not in (a[1:], b[1:]):
        return None
    return (max(a[0], b[0]), *max(a[1:], b[1:]))


def _shape(shape: Shape) -> str:
    return "x".join(map(str, shape))


def lower(network: ir.Network, definitions: Definitions, report: Report) -> Lowered | None:
    return Lowering(network, definitions, report).run()
