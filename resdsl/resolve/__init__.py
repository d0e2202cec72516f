"""syntax -> IR: follow `extends`, evaluate parameters, expand recipes, read every statement.

Order of precedence, lowest first: a base spec, the spec that extends it, `--set` values. A
recipe's train section is overridden statement by statement by the spec's own; the options of
`optimizer`, `batchnorm`, `head`, `loss`, `ema`, `batch` and `drop_path` are overridden one by
one (those of `optimizer` and `loss` when they name the same kind).
"""

from __future__ import annotations

import math
import stat
from collections import deque
from pathlib import Path

from pydantic import ValidationError

from .. import ir, prelude_cache
from .. import syntax as s
from ..definitions import PRELUDE, Definitions, collect
from ..diagnostics import Report, Span, did_you_mean, display_path, remember_source
from ..interpret import Interpreter
from ..limits import MAX_MAGNITUDE, MAX_SPEC_BYTES
from ..parse import parse_text
from .network import NetworkReader
from .train import TrainReader
from .values import Number, Values, show

RECIPES = Path(__file__).parent.parent / "recipes"
MERGED_OPTIONS = ("optimizer", "batchnorm", "head", "loss", "ema", "batch", "drop_path")
# statements whose value is replaced while their options are kept: `batch 256` keeps a recipe's
# `, repeated_augmentation 4`, `drop_path 0.1` its `, rule timm`
VALUE_AND_OPTIONS = ("batch", "drop_path")


def recipe_names() -> list[str]:
    return sorted(p.stem for p in RECIPES.glob("*.res"))


class Loader:
    def __init__(self, report: Report):
        self.report = report
        self.files: dict[Path, s.SpecFile | None] = {}

    # files ------------------------------------------------------------------------------------
    def read(self, path: Path, mentioned_at: Span | None = None) -> s.SpecFile | None:
        key = path.resolve()
        if key in self.files:
            return self.files[key]
        shown = display_path(path)
        text = self._text(path, shown, mentioned_at)
        spec = None if text is None else parse_text(text, shown, self.report)
        if spec is not None:
            self._check_layout(spec)
        self.files[key] = spec
        return spec

    def _text(self, path: Path, shown: str, mentioned_at: Span | None) -> str | None:
        """The file's text, when it is a regular file of bounded size in UTF-8."""
        try:
            info = path.stat()
            if stat.S_ISDIR(info.st_mode):
                self.report.error(f"{shown} is a directory, not a .res file", mentioned_at)
                return None
            if not stat.S_ISREG(info.st_mode):
                self.report.error(
                    f"{shown} is not a regular file (a device, pipe or socket); not reading it",
                    mentioned_at,
                )
                return None
            if info.st_size > MAX_SPEC_BYTES:
                self.report.error(
                    f"{shown} has {info.st_size:,} bytes; a spec has at most {MAX_SPEC_BYTES:,}",
                    mentioned_at,
                )
                return None
            with open(path, "rb") as file:
                data = file.read(MAX_SPEC_BYTES + 1)
        except FileNotFoundError:
            self.report.error(f"no such file: {shown}", mentioned_at, "check the path")
            return None
        except ValueError:  # a NUL character in the path
            self.report.error(
                f"cannot read {shown!r}: the path holds a NUL character", mentioned_at
            )
            return None
        except OSError as error:
            self.report.error(f"cannot read {shown}: {error.strerror}", mentioned_at)
            return None
        try:
            return data.decode("utf-8").removeprefix("\ufeff")  # a byte-order mark is allowed
        except UnicodeDecodeError as error:
            line = data.count(b"\n", 0, error.start) + 1
            column = error.start - (data.rfind(b"\n", 0, error.start) + 1) + 1
            remember_source(shown, data.decode("utf-8", errors="replace"))
            self.report.error(
                f"{shown} is not UTF-8 text: byte 0x{data[error.start]:02x} cannot start or "
                "continue a character",
                Span(shown, line, column, line, column + 1),
                "save the file as UTF-8",
            )
            return None

    def _check_layout(self, spec: s.SpecFile) -> None:
        if not spec.networks and not spec.trains:
            self.report.error(
                f"{spec.path} declares no network",
                Span(spec.path, 1, 1, 1, 2),
                "a spec holds one `network NAME { ... }`, optionally followed by `train ...`",
            )
        for extra in spec.networks[1:]:
            self.report.error(
                "a spec holds one network; this is a second one",
                extra.span,
                "put each network in its own file (one can extend another)",
            )
        for extra in spec.trains[1:]:
            self.report.error("a spec holds one train section; this is a second one", extra.span)
        seen: dict[str, s.ParamDecl] = {}
        for param in spec.params:
            first = seen.setdefault(param.name.text, param)
            if first is not param:
                self.report.error(
                    f"parameter `{param.name.text}` is declared twice",
                    param.name.span,
                    f"the first declaration is at line {first.span.line}",
                )

    def chain(self, path: Path) -> list[s.SpecFile]:
        """The spec and the specs it extends, base first.

        `extends` reaches only `.res` files inside the spec's project (`spec_root`) or the
        working directory's tree."""
        files: list[s.SpecFile] = []
        seen: list[Path] = []
        root = spec_root(path)
        mentioned_at = None
        while True:
            spec = self.read(path, mentioned_at)
            if spec is None:
                return []
            if not spec.networks:
                if files:
                    self.report.error(f"{spec.path} declares no network to extend", mentioned_at)
                return []  # otherwise reported, with its place, when the file was read
            files.insert(0, spec)
            seen.append(path.resolve())
            extends = spec.networks[0].extends
            if extends is None:
                return files
            path = Path(spec.path).parent / extends.value
            mentioned_at = extends.span
            if not self._reachable(path, root, extends):
                return []
            if path.resolve() in seen:
                self.report.error(
                    f"`extends` makes a cycle: {display_path(path)} extends itself",
                    extends.span,
                    "a spec can build on another, not on itself",
                )
                return []

    def _reachable(self, path: Path, root: Path, extends: s.Str) -> bool:
        """May `extends` read this file? (A refused file is named, never read.)"""
        if not extends.value.isprintable():
            self.report.error(
                "`extends` takes a path of printable characters",
                extends.span,
                "remove the control characters from the path",
            )
            return False
        target = path.resolve()
        if path.suffix != ".res" or target.suffix != ".res":
            self.report.error(
                f"`extends` takes a .res file, not {extends.value!r}",
                extends.span,
                'write the path of a spec, such as "../resnet50.res"',
            )
            return False
        if not (target.is_relative_to(root) or target.is_relative_to(Path.cwd().resolve())):
            self.report.error(
                f"`extends` refuses {extends.value!r}: it lies outside the spec's project ({root}) "
                "and the working directory's",
                extends.span,
                "extend a spec of the same project (the directory above it with a .git, a "
                "pyproject.toml or a .resdsl file), or run resdsl from a directory that holds both",
            )
            return False
        return True

    # parameters -------------------------------------------------------------------------------
    def params(self, files: list[s.SpecFile], sets: list[str]) -> dict[str, Number]:
        """Parameter values: each declaration's latest form, evaluated once what it uses is."""
        latest: dict[str, s.ParamDecl] = {}
        first: dict[str, s.ParamDecl] = {}
        for spec in files:
            for decl in spec.params:
                latest[decl.name.text] = decl
                first.setdefault(decl.name.text, decl)
        overrides = self._parse_sets(sets, list(latest))
        env: dict[str, Number] = {}
        failed: set[str] = set()
        # in an order where each comes after what it uses (linear in the declarations)
        uses = {name: _uses(decl.value) & latest.keys() for name, decl in latest.items()}
        users: dict[str, list[str]] = {name: [] for name in latest}
        for name, used in uses.items():
            for other in used:
                users[other].append(name)
        waiting = {name: len(used) for name, used in uses.items()}
        ready = deque(name for name in latest if not waiting[name])
        while ready:
            name = ready.popleft()
            if uses[name] & failed:
                failed.add(name)  # its own problem was reported already
            else:
                value = self._param_value(name, latest[name], first[name], env, overrides)
                if value is None:
                    failed.add(name)
                else:
                    env[name] = value
            for user in users[name]:
                waiting[user] -= 1
                if not waiting[user]:
                    ready.append(user)
        pending = [name for name in latest if name not in env and name not in failed]
        if pending:
            names = ", ".join(f"`{name}`" for name in pending)
            self.report.error(
                f"parameters {names} refer to each other in a cycle",
                latest[pending[0]].span,
                "give one of them a value that does not depend on the others",
            )
        return env

    def _param_value(self, name, decl, first, env, overrides) -> Number | None:
        value = Values(env, self.report).evaluate(decl.value)
        if value is None:
            return None
        if first is not decl:
            base = Values(dict(env), Report()).evaluate(first.value)
            if base is not None and type(base) is not type(value):
                self.report.error(
                    f"parameter `{name}` is a {_kind(base)} in {first.span.path}, "
                    f"but {show(value)} is a {_kind(value)}",
                    decl.value.span,
                )
                return base
        if name in overrides:
            return self._coerce_set(name, value, overrides[name])
        return value

    def _parse_sets(self, sets: list[str], known: list[str]) -> dict[str, str]:
        parsed: dict[str, str] = {}
        for item in sets:
            name, eq, text = item.partition("=")
            name, text = name.strip(), text.strip()
            if not eq or not name or not text:
                self.report.error(
                    f"`--set {item}` is not of the form NAME=VALUE", None, "write e.g. --set n=18"
                )
                continue
            if name not in known:
                hint = (
                    did_you_mean(name, sorted(known), "parameters of this spec")
                    if known
                    else "this spec declares no parameters"
                )
                self.report.error(f"`--set {item}`: unknown parameter `{name}`", None, hint)
                continue
            parsed[name] = text
        return parsed

    def _coerce_set(self, name: str, default: Number, text: str) -> Number:
        """The --set value; on a mistake, the default (so nothing else reports it again)."""
        try:
            value = int(text) if isinstance(default, int) else float(text)
            if not math.isfinite(value) or abs(value) > MAX_MAGNITUDE:
                raise ValueError(text)
            return value
        except ValueError:
            self.report.error(
                f"`--set {name}={text}`: parameter `{name}` is a {_kind(default)} "
                f"(default {show(default)})",
                None,
                f"give a {_kind(default)}, e.g. --set {name}={show(default)}",
            )
            return default

    # statements -------------------------------------------------------------------------------
    def network_statements(self, files: list[s.SpecFile]):
        """The network's statements and stages, `extends` applied; and the stages refused (read
        for their own mistakes only)."""
        single: dict[str, s.Statement] = {}
        stages: list[s.Statement] = []
        self.refused_stages: list[s.Statement] = []
        for depth, spec in enumerate(files):
            decl = spec.networks[0]
            own_single, own_stages = self._split_body(decl.body)
            if depth == 0:
                single, stages = own_single, own_stages
                continue
            for keyword, st in own_single.items():
                single[keyword] = _override(single.get(keyword), st)
            names = [st.label.text for st in stages if st.label]
            for st in own_stages:
                if st.label is None or st.label.text not in names:
                    base = files[depth - 1].networks[0].name.text
                    self.report.error(
                        "a stage in an extending network must name a stage of its base to replace"
                        if st.label is None
                        else f"network `{base}` has no stage `{st.label.text}` to replace",
                        st.label.span if st.label else st.span,
                        f"stages of `{base}`: {', '.join(names) or '(none named)'}; to change "
                        "the list of stages, write a new network",
                    )
                    self.refused_stages.append(st)
                    continue
                stages[names.index(st.label.text)] = st
        return single, stages

    def _split_body(self, body: tuple[s.Statement, ...]):
        single: dict[str, s.Statement] = {}
        stages: list[s.Statement] = []
        for st in body:
            if st.keyword == "stage":
                stages.append(st)
            elif st.keyword in single:
                self.report.error(
                    f"`{st.keyword}` is given twice",
                    st.span,
                    f"the first is at line {single[st.keyword].span.line}; keep one",
                )
            else:
                single[st.keyword] = st
        return single, stages

    def train_statements(
        self, files: list[s.SpecFile]
    ) -> tuple[str | None, dict[str, s.Statement], s.TrainDecl | None]:
        """The train section of a chain of specs: each spec's statements override those of the
        spec it extends, one by one (as `network ... extends` does), and a spec that names a
        recipe starts again from that recipe. Returns the recipe, the statements and the
        declaration that named the recipe (for messages inside the recipe's file)."""
        recipe, statements, named = None, {}, None
        for spec in files:
            if not spec.trains:
                continue
            decl = spec.trains[0]
            if decl.recipe is None and decl.body is None:
                self.report.error(
                    "`train` needs a recipe or a body",
                    decl.span,
                    f"write `train paper_cifar`, or `train {{ ... }}`; recipes: "
                    f"{', '.join(recipe_names())}",
                )
                continue
            if decl.recipe is not None:
                recipe, named = decl.recipe.text, decl
                if recipe not in recipe_names():
                    self.report.error(
                        f"unknown recipe `{recipe}`",
                        decl.recipe.span,
                        did_you_mean(recipe, recipe_names(), "recipes"),
                    )
                    return recipe, {}, named
                recipe_file = prelude_cache.load(RECIPES / f"{recipe}.res", parse_text)
                if recipe_file is None or not recipe_file.trains:  # pragma: no cover
                    return recipe, {}, named
                statements, _ = self._split_body(recipe_file.trains[0].body or ())
            own, _ = self._split_body(decl.body or ())
            for keyword, st in own.items():
                statements[keyword] = _override(statements.get(keyword), st)
        return recipe, statements, named

    def _from_recipe(self, before: int, recipe: str, named: s.TrainDecl) -> None:
        """Problems found in a recipe's own lines also name the spec line that brought it in."""
        where = f"{named.span.path}:{named.span.line}"
        path = str(RECIPES / f"{recipe}.res")
        for i, d in enumerate(self.report.diagnostics[before:], start=before):
            if d.span is not None and d.span.path == path:
                note = f"the recipe `{recipe}` comes from `train {recipe}` at {where}"
                self.report.diagnostics[i] = d._replace(
                    hint=f"{d.hint}; {note}" if d.hint else note
                )

    # the whole spec ---------------------------------------------------------------------------
    def definitions(self, files: list[s.SpecFile]) -> Definitions:
        """The prelude's definitions and those of every file of the chain, each of the chain's
        checked on its own: its mistakes are reported whatever the network does with it."""
        prelude = prelude_cache.load(PRELUDE, parse_text)
        definitions = collect(([prelude] if prelude else []) + files, self.report)
        interpreter = Interpreter(definitions, self.report)
        for spec in files:
            for written in spec.definitions:
                key = (written.kind, written.name.text)
                flat = definitions.table(written.kind).get(written.name.text)
                if key in definitions.broken or flat is None or flat.span != written.span:
                    continue
                if not interpreter.check_definition(flat):
                    definitions.broken.add(key)
        return definitions

    def _train_drop_path(
        self, network: ir.Network, drop_path: tuple[float, str, Span], definitions: Definitions
    ) -> ir.Network:
        """A train section's `drop_path RATE` (timm's `--drop-path`): the network's blocks drop
        their residual branch, as if the network had said it."""
        rate, rule, span = drop_path
        if network.drop_path:
            self.report.error(
                "drop path is set twice: by the network and by the train section",
                span,
                "keep one `drop_path`",
            )
            return network
        for stage in network.stages:
            block = stage.block
            if rate and "drop_path" not in definitions.blocks[block.name].param_names():
                self.report.error(
                    f"block `{block.name}` has no `drop_path` parameter to set",
                    span,
                    "define the block with a `drop_path = 0` parameter and a "
                    "`drop_path drop_path` layer before its add",
                )
                return network
        return network.model_copy(update={"drop_path": rate, "drop_path_rule": rule})

    def load(self, path: Path, sets: list[str]) -> ir.Spec | None:
        files = self.chain(path)
        if not files:
            return None
        params = self.params(files, sets)
        if self.report.failed:
            return None
        definitions = self.definitions(files)
        values = Values(params, self.report)
        decl = files[-1].networks[0]
        single, stages = self.network_statements(files)
        network = NetworkReader(values, self.report, definitions).read(
            decl.name, single, stages, decl.span, self.refused_stages
        )
        train = None
        train_decl = next((f.trains[0] for f in reversed(files) if f.trains), None)
        if train_decl is not None:  # read even when the network has problems: report them all
            before = len(self.report.diagnostics)
            recipe, statements, named = self.train_statements(files)
            if len(self.report.diagnostics) == before:
                reader = TrainReader(values, self.report)
                train = reader.read(recipe, statements, train_decl.span, network)
                if reader.drop_path is not None and network is not None:
                    network = self._train_drop_path(network, reader.drop_path, definitions)
            if named is not None:
                self._from_recipe(before, recipe, named)
        if self.report.failed:
            return None
        try:
            return ir.Spec(
                path=files[-1].path,
                network=network,
                train=train,
                params=params,
                files=tuple(f.path for f in files),
                definitions=definitions,
            )
        except ValidationError as error:  # pragma: no cover - readers check first
            self.report.error(f"invalid spec: {error.errors()[0]['msg']}", decl.span)
            return None


def _override(base: s.Statement | None, new: s.Statement) -> s.Statement:
    """`new` replaces `base`, except that option-only statements merge option by option."""
    if base is None or new.keyword not in MERGED_OPTIONS:
        return new
    same = [_text(a) for a in new.args] == [_text(a) for a in base.args]
    if new.args and not same and new.keyword not in VALUE_AND_OPTIONS:
        return new
    names = {o.name.text for o in new.options}
    kept = tuple(o for o in base.options if o.name.text not in names)
    return new._replace(args=new.args or base.args, options=kept + new.options)


def _text(value) -> str:
    return getattr(value, "text", None) or getattr(value, "name", None) or str(value)


def _uses(expr: s.Expr) -> set[str]:
    """The parameters an expression refers to."""
    if isinstance(expr, s.Ref):
        return {expr.name}
    if isinstance(expr, s.BinOp):
        return _uses(expr.left) | _uses(expr.right)
    if isinstance(expr, s.Neg):
        return _uses(expr.operand)
    if isinstance(expr, s.Call):
        return set().union(*map(_uses, expr.args))
    return set()


def _kind(value: Number) -> str:
    return "whole number" if isinstance(value, int) else "number"


# what marks a project's root, as git, Python tools and resdsl's own marker file find one
PROJECT_MARKERS = (".git", "pyproject.toml", ".resdsl")


def spec_root(path: Path) -> Path:
    """What `extends` may reach: the spec's project, the nearest directory above the spec that
    holds a `.git`, a `pyproject.toml` or a `.resdsl` file; without one, the working directory
    when the spec lies inside it, else the spec's own directory."""
    spec = path.resolve()
    for directory in spec.parents:
        if any((directory / marker).exists() for marker in PROJECT_MARKERS):
            return directory
    here = Path.cwd().resolve()
    return here if spec.is_relative_to(here) else spec.parent


def load(path: str | Path, sets: list[str] | tuple[str, ...] = (), report: Report | None = None):
    """Parse and resolve a spec; problems go to `report` and `None` comes back."""
    report = report if report is not None else Report()
    return Loader(report).load(Path(path), list(sets))
