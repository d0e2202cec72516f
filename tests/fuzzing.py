"""Hostile and broken specs, made reproducibly from the library's: the fuzzer behind
tests/test_fuzz.py (a few hundred inputs) and bench/fuzz.py (ten thousand).

Every input must end in a valid spec or in located errors (`path:line:col`), within bounded time
and memory, with no other exception.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LIBRARY = sorted(p for p in (ROOT / "specs").rglob("*.res"))

HOSTILE_NUMBERS = [
    "9" * 5000, "1e400", "1e400-1e400", "10" + "0" * 40, "-" * 500 + "1", "0", "-1", "1e-400",
    "0.0000001", "nan", "inf", "2147483648", "1e15", "999999999999999",
    " + ".join(["1"] * 500), "(" * 300 + "1" + ")" * 300, "1 / 0", "7 // 0", "3.5",
]  # fmt: skip
HOSTILE_EXTENDS = [
    "/etc/passwd", "/dev/zero", "/dev/stdin", "/proc/self/environ", "../../../../etc/x.res",
    "/tmp", ".", "x.res", "../" * 30 + "y.res", "fifo.res", "big.res", "\u00e9.res",
]  # fmt: skip
JUNK = ["\x00", "\ufeff", "\r\n", "\r", "\t", "\u2028", "'", "`", "{", "}", ",", "#", "\\",
        "\u00e9", "\U0001f600", ":", "=", "x"]  # fmt: skip


@dataclass
class Outcome:
    kind: str  # "ok", "errors" or "internal"
    unlocated: int  # diagnostics about the file's content without a place
    seconds: float
    detail: str = ""


def mutate(text: str, rng: random.Random) -> bytes:
    """One mutation (sometimes two) of a spec's text, as the bytes of a file."""
    tokens = text.split(" ")
    choice = rng.randrange(14)
    if choice == 0 and len(tokens) > 1:  # delete a token
        del tokens[rng.randrange(len(tokens))]
        out = " ".join(tokens)
    elif choice == 1 and len(tokens) > 2:  # swap two tokens
        i, j = rng.randrange(len(tokens)), rng.randrange(len(tokens))
        tokens[i], tokens[j] = tokens[j], tokens[i]
        out = " ".join(tokens)
    elif choice == 2:  # duplicate a token or a line
        lines = text.split("\n")
        i = rng.randrange(len(lines))
        lines.insert(i, lines[i] * rng.choice([1, 2, 50]))
        out = "\n".join(lines)
    elif choice == 3:  # a hostile number where a number was
        digits = [i for i, c in enumerate(text) if c.isdigit()]
        i = rng.choice(digits) if digits else 0
        out = text[:i] + rng.choice(HOSTILE_NUMBERS) + text[i + 1 :]
    elif choice == 4:  # junk characters
        i = rng.randrange(len(text) + 1)
        out = text[:i] + rng.choice(JUNK) * rng.choice([1, 3, 1000]) + text[i:]
    elif choice == 5:  # truncation
        out = text[: rng.randrange(len(text) + 1)]
    elif choice == 6:  # a very long line
        out = text + "\nnetwork z {\n    stage: 3 x 16" + ", stride 1" * 10_000 + "\n}\n"
    elif choice == 7:  # many broken lines
        out = text + ",\n" * rng.choice([100, 10_000])
    elif choice == 8:  # a hostile extends target
        target = rng.choice(HOSTILE_EXTENDS)
        start = text.find('extends "')
        end = text.find('"', start + len('extends "')) if start >= 0 else -1
        if end >= 0:
            start += len('extends "')
            out = text[:start] + target + text[end:]
        else:
            out = text.replace("network ", f'network x extends "{target}" ', 1)
    elif choice == 9:  # parameters that grow exponentially
        lines = ["param q0 = 2"] + [f"param q{i} = q{i - 1} * q{i - 1}" for i in range(1, 27)]
        out = "\n".join(lines) + "\n" + text.replace("classes  10", "classes q26")
    elif choice == 10:  # deep expressions
        out = "param p = " + rng.choice(HOSTILE_NUMBERS[13:16]) + "\n" + text
    elif choice == 11:  # line endings
        out = text.replace("\n", rng.choice(["\r\n", "\r", "\n\n", " \\\n"]))
    elif choice == 12:  # bytes that are not UTF-8
        raw = text.encode()
        i = rng.randrange(len(raw) + 1)
        return raw[:i] + bytes([rng.choice([0xFF, 0xC3, 0x80, 0xFE])]) + raw[i:]
    else:  # two mutations
        return mutate(mutate(text, rng).decode("utf-8", errors="replace"), rng)
    return out.encode("utf-8", errors="surrogatepass")


def inputs(seed: int, count: int) -> Iterator[tuple[str, bytes]]:
    """(name, content) pairs, the same for the same seed."""
    rng = random.Random(seed)
    texts = [(p.relative_to(ROOT).as_posix(), p.read_text()) for p in LIBRARY]
    for number in range(count):
        name, text = rng.choice(texts)
        yield f"{number:05d}_{Path(name).stem}.res", mutate(text, rng)


def prepare(directory: Path) -> None:
    """Files that hostile `extends` targets name inside the fuzzing directory."""
    import os

    fifo = directory / "fifo.res"
    if not fifo.exists() and hasattr(os, "mkfifo"):
        os.mkfifo(fifo)
    (directory / "big.res").write_bytes(b"#" * (2 << 20))


def run_one(path: Path) -> Outcome:
    """Check one file in this process, as `resdsl check` does."""
    from resdsl.frontend import check

    start = time.perf_counter()
    try:
        report = check(path)
    except Exception as error:  # an internal error: what the fuzzer hunts
        return Outcome("internal", 0, time.perf_counter() - start, f"{type(error).__name__}: "
                       f"{error}"[:300])  # fmt: skip
    seconds = time.perf_counter() - start
    if not report.diagnostics:
        return Outcome("ok", 0, seconds)
    unlocated = [d for d in report.diagnostics if d.span is None]
    rendered = report.render()
    if "Traceback" in rendered:
        return Outcome("internal", 0, seconds, rendered[:300])
    return Outcome("errors", len(unlocated), seconds, unlocated[0].message if unlocated else "")
