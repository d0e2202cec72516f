"""The one way text from outside (a spec's path, an output directory, a command line) enters
generated code: escaped so that it is inert in a comment, a docstring and a string literal."""

from __future__ import annotations

import shlex


def code_text(text: str) -> str:
    """`text` with backslashes, quotes and every unprintable character (newlines included)
    escaped as in a Python string literal: safe between quotes of any kind and in a comment,
    and it reads back as `text` inside a string literal."""
    out = []
    for char in text:
        if char == "\\":
            out.append("\\\\")
        elif char in "\"'":
            out.append("\\" + char)
        elif char == "\n":
            out.append("\\n")
        elif char == "\r":
            out.append("\\r")
        elif char == "\t":
            out.append("\\t")
        elif not char.isprintable():
            code = ord(char)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000
                       else f"\\U{code:08x}")  # fmt: skip
        else:
            out.append(char)
    return "".join(out)


def read_code_text(text: str) -> str | None:
    """The text that `code_text` escaped (None if `text` is not such an escape)."""
    import ast

    try:
        value = ast.literal_eval(f'"{text}"')
    except (SyntaxError, ValueError):
        return None
    return value if isinstance(value, str) else None


def shell_words(words: list[str]) -> str:
    """A command line that a shell runs as `words`."""
    return " ".join(shlex.quote(word) for word in words)
