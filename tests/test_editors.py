"""editors/vscode: the TextMate grammar's keywords are exactly those of resdsl/grammar.lark."""

from __future__ import annotations

import json
import re
import subprocess
import sys

from tests.helpers import ROOT, SPECS

VSCODE = ROOT / "editors" / "vscode"


def lark_keywords() -> set[str]:
    """Every quoted word of the Lark grammar (its comments, after `//`, left out)."""
    text = (ROOT / "resdsl" / "grammar.lark").read_text()
    code = "\n".join(line.split("//", 1)[0] for line in text.splitlines())
    return set(re.findall(r'"([A-Za-z_][A-Za-z0-9_]*)"', code))


def tm_grammar() -> dict:
    return json.loads((VSCODE / "syntaxes" / "res.tmLanguage.json").read_text())


def tm_keywords() -> set[str]:
    found = set()
    for pattern in tm_grammar()["repository"]["keywords"]["patterns"]:
        match = re.fullmatch(r"\\b\(\?:([\w|]+)\)\\b", pattern["match"])
        assert match, pattern["match"]
        found |= set(match.group(1).split("|"))
    return found


def test_the_textmate_grammar_has_exactly_the_keywords_of_grammar_lark():
    expected = lark_keywords()
    assert {"param", "network", "stage", "train", "schedule"} <= expected
    missing, extra = expected - tm_keywords(), tm_keywords() - expected
    assert not missing and not extra, (
        f"missing {sorted(missing)}, extra {sorted(extra)}: run  make editors"
    )


def test_the_textmate_grammar_is_what_the_generator_writes():
    result = subprocess.run(
        [sys.executable, str(VSCODE / "generate_grammar.py"), "--check"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


def test_every_pattern_compiles_and_keywords_are_found_in_the_library():
    grammar = tm_grammar()
    patterns = [p for entry in grammar["repository"].values() for p in entry["patterns"]]
    compiled = [re.compile(p["match"]) for p in patterns]
    keywords = re.compile(
        r"|".join(p["match"] for p in grammar["repository"]["keywords"]["patterns"])
    )
    used = set()
    for spec in SPECS:
        for line in (ROOT / spec).read_text().splitlines():
            code = line.split("#", 1)[0]
            code = re.sub(r'"[^"]*"', "", code)
            used |= set(keywords.findall(code))
    assert {"network", "input", "stage", "train", "extends", "param", "x"} <= used
    assert len(compiled) >= 8


def test_the_extension_declares_the_language_for_res_files():
    package = json.loads((VSCODE / "package.json").read_text())
    (language,) = package["contributes"]["languages"]
    (grammar,) = package["contributes"]["grammars"]
    assert language["id"] == grammar["language"] == "resdsl"
    assert language["extensions"] == [".res"]
    assert (VSCODE / grammar["path"]).exists()
    assert grammar["scopeName"] == tm_grammar()["scopeName"]
    config = json.loads((VSCODE / language["configuration"]).read_text())
    assert config["comments"] == {"lineComment": "#"}
    assert ["{", "}"] in config["brackets"] and ["(", ")"] in config["brackets"]
