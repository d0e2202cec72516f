"""The spec library as a table (`resdsl list`), and new specs that extend one (`resdsl new`)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from .diagnostics import SpecError
from .frontend import load_spec

RECIPES = Path(__file__).parent / "recipes"


@dataclass
class Entry:
    path: Path
    name: str = "-"
    depth: int | None = None
    input: str = "-"
    dataset: str = "-"
    params: int | None = None
    macs: int | None = None
    errors: int = 0


def library(directory: Path) -> list[Entry]:
    """Every `.res` file under `directory`, loaded; one that does not load counts its errors."""
    entries = []
    for path in sorted(directory.rglob("*.res")):
        entry = Entry(path)
        try:
            spec, analysis = load_spec(path)
        except SpecError as error:
            entry.errors = max(1, sum(d.severity == "error" for d in error.report.diagnostics))
        else:
            entry.name = spec.network.name
            entry.depth = analysis.depth
            entry.input = "x".join(str(v) for v in spec.network.input)
            entry.dataset = spec.train.data.kind if spec.train is not None else "-"
            entry.params = analysis.params
            entry.macs = analysis.macs
        entries.append(entry)
    return entries


def _compact(macs: int) -> str:
    return f"{macs / 1e9:.2f} G" if macs >= 1e9 else f"{macs / 1e6:.1f} M"


def library_table(directory: Path, entries: list[Entry]) -> str:
    header = ("spec", "network", "depth", "input", "dataset", "params", "multiply-adds")
    rows = [header]
    for e in entries:
        shown = e.path.relative_to(directory).as_posix() if e.path.is_relative_to(directory) \
            else e.path.as_posix()  # fmt: skip
        if e.errors:
            problem = f"{e.errors} error{'s' * (e.errors != 1)} (resdsl check {e.path.as_posix()})"
            rows.append((shown, problem, "", "", "", "", ""))
            continue
        rows.append((shown, e.name, str(e.depth), e.input, e.dataset, f"{e.params:,}",
                     _compact(e.macs)))  # fmt: skip
    widths = [max(len(r[i]) for r in rows if not (r is not header and r[2] == "" and i == 1))
              for i in range(len(header))]  # fmt: skip
    right = (False, False, True, False, False, True, True)
    lines = []
    for r in rows:
        if r is not header and r[2] == "":  # an error message runs across the columns
            lines.append(f"{r[0].ljust(widths[0])}  {r[1]}")
            continue
        lines.append("  ".join(c.rjust(w) if a else c.ljust(w)
                               for c, w, a in zip(r, widths, right)).rstrip())  # fmt: skip
    lines.insert(1, "-" * max(len(line) for line in lines))
    broken = sum(e.errors > 0 for e in entries)
    lines.append(f"\n{len(entries)} specs in {directory.as_posix()}"
                 + (f", {broken} with errors" if broken else ""))  # fmt: skip
    return "\n".join(lines)


# resdsl new ------------------------------------------------------------------------------------
_STATEMENT = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)")


def _code(line: str) -> str:
    """The line without its comment (the language has no `#` inside its strings' use here)."""
    return line.split("#", 1)[0].rstrip()


def _statements(lines: list[str]) -> list[str]:
    """Join the lines that a trailing comma continues; drop blank and comment-only lines."""
    statements: list[str] = []
    pending = ""
    for line in lines:
        if not _code(line).strip() and not pending:
            continue
        text = line.strip() if not pending else " " + line.strip()
        pending += text
        if not _code(line).endswith(","):
            statements.append(pending)
            pending = ""
    if pending:
        statements.append(pending)
    return statements


@dataclass
class Sections:
    params: dict[str, str]  # name -> the `param` line
    network: list[str]  # the statements of the network body
    train_head: str | None  # e.g. "train paper_cifar"
    train: list[str]  # the statements of the train body


def sections(text: str) -> Sections:
    """A spec file's parameters, network statements and train section, as source lines."""
    params: dict[str, str] = {}
    network: list[str] = []
    train: list[str] = []
    train_head = None
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        code = _code(lines[i]).strip()
        word = _STATEMENT.match(code)
        if not word:
            i += 1
            continue
        keyword = word.group(1)
        if keyword == "param":
            name = code.split()[1].split("=")[0] if len(code.split()) > 1 else ""
            params[name] = code
        if keyword in ("network", "train"):
            if keyword == "train":
                train_head = code.split("{", 1)[0].strip()
            if "{" in code:
                body, depth, i = [], code.count("{") - code.count("}"), i + 1
                while i < len(lines) and depth > 0:
                    depth += _code(lines[i]).count("{") - _code(lines[i]).count("}")
                    if depth > 0 or _code(lines[i]).strip() != "}":
                        body.append(lines[i])
                    i += 1
                (network if keyword == "network" else train).extend(_statements(body))
                continue
        i += 1
    return Sections(params, network, train_head, train)


def _key(statement: str) -> str:
    """What an overriding statement replaces: its keyword, or `stage NAME` for a named stage."""
    words = _code(statement).replace(":", " : ").split()
    if words[0] == "stage" and len(words) > 1 and words[1] != ":":
        return f"stage {words[1]}"
    return words[0]


@dataclass
class Merged:
    params: dict[str, str]  # name -> its latest `param` line
    statements: list[str]  # the network's statements other than stages
    stages: list[str]  # the named stages (each replaceable by name)
    unnamed: list[str]  # the stages without names (not replaceable)
    train_head: str | None
    train: list[str]


def _merge(chain: list[Sections]) -> Merged:
    """The chain's statements (base first), each replaced by the latest file's."""
    merged = Merged({}, [], [], [], None, [])
    network: dict[str, str] = {}
    for file in chain:
        merged.params.update(file.params)
        for statement in file.network:
            if _key(statement) == "stage":
                merged.unnamed.append(statement)
            else:
                network[_key(statement)] = statement
        if file.train_head is not None:  # a recipe named starts again; a body builds on
            if len(file.train_head.split()) > 1 or merged.train_head is None:
                merged.train_head = file.train_head
                merged.train = _recipe(file.train_head, file.train)
            else:
                merged.train = _recipe(None, merged.train + file.train)
    merged.statements = [s for k, s in network.items() if not k.startswith("stage ")]
    merged.stages = [s for k, s in network.items() if k.startswith("stage ")]
    return merged


def _recipe(head: str | None, body: list[str]) -> list[str]:
    """The train section's statements: its recipe's, replaced by the section's own."""
    words = (head or "").split()
    recipe = RECIPES / f"{words[1]}.res" if len(words) > 1 else None
    merged: dict[str, str] = {}
    if recipe is not None and recipe.exists():
        for statement in sections(recipe.read_text(encoding="utf-8")).train:
            merged[_key(statement)] = statement
    for statement in body:
        merged[_key(statement)] = statement
    return list(merged.values())


def _align(statements: list[str]) -> list[str]:
    """Keyword, then the arguments in one column, as the library writes them."""
    width = max((len(s.split(None, 1)[0]) for s in statements if " " in s), default=0)
    return [s if s.startswith("stage") or " " not in s
            else f"{s.split(None, 1)[0].ljust(width)} {s.split(None, 1)[1]}"
            for s in statements]  # fmt: skip


def new_spec(file: Path, base: Path) -> str:
    """The text of a spec that extends `base`, its statements written as commented overrides.

    Raises `SpecError` if `base` does not load."""
    spec, analysis = load_spec(base)
    chain = [
        Path(p) for p in spec.files
        if Path(p).resolve().parent != RECIPES.resolve()
    ]  # fmt: skip
    merged = _merge([sections(path.read_text(encoding="utf-8")) for path in chain])
    name = re.sub(r"\W", "_", file.stem)
    name = name if re.match(r"[A-Za-z_]", name) else f"net_{name}"
    here, there = file.resolve().parent, base.resolve()
    target = (there.as_posix() if os.path.commonpath([here, there]) == os.sep
              else Path(os.path.relpath(there, here)).as_posix())  # fmt: skip
    out = [
        f"# A variant of {spec.path}",
        f"# ({spec.network.name}: {analysis.depth} layers, {analysis.params:,} parameters, "
        f"{_compact(analysis.macs)} multiply-adds).",
        "# Everything not written here comes from it. Uncomment a line to override it, then",
        f"# `resdsl summary {file.as_posix()}` shows the result.",
        "",
    ]
    if merged.params:
        out += ["# Parameters: a value written here replaces the base's everywhere.",
                *(f"# {line}" for line in merged.params.values()), ""]  # fmt: skip
    out.append(f'network {name} extends "{target}" {{')
    out += [f"    # {s}" for s in _align(merged.statements)]
    if merged.stages:
        out.append("    # A stage is replaced whole, by name:")
        out += [f"    # {s}" for s in merged.stages]
    if merged.unnamed:
        out.append("    # The base's stages have no names, so they cannot be replaced here; its")
        out.append("    # parameters change them. They are:")
        out += [f"    #   {s}" for s in merged.unnamed]
    out.append("}")
    if merged.train_head is not None:
        words = merged.train_head.split()
        recipe = f" (its recipe: {words[1]})" if len(words) > 1 else ""
        out += [
            "",
            "# A train section written here builds on the base's, statement by statement: uncomment",
            f"# `train {{`, `}}` and the statements to change. The base trains with{recipe}:",
            "# train {",
            *(f"#     {s}" for s in _align(merged.train)),
            "# }",
        ]
    return "\n".join(out) + "\n"
