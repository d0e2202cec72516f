"""Regenerate every checked-in expected output: `make goldens` (or `python -m tests.regenerate_goldens`).

- tests/specs_with_errors/*.expected: the diagnostics of each broken spec.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys

from tests.helpers import ROOT


def error_snapshots() -> None:
    from resdsl.cli import main

    for spec in sorted((ROOT / "tests" / "specs_with_errors").glob("*.res")):
        err = io.StringIO()
        sys.argv = ["resdsl", "check", spec.relative_to(ROOT).as_posix()]
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                main()
            except SystemExit:
                pass
        spec.with_suffix(".expected").write_text(err.getvalue(), encoding="utf-8")
        print(f"wrote {spec.with_suffix('.expected').relative_to(ROOT)}")


def main() -> None:
    os.chdir(ROOT)
    error_snapshots()


if __name__ == "__main__":
    main()
