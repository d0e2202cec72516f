"""Regenerate every checked-in expected output: `make goldens` (or `python -m tests.regenerate_goldens`).

- tests/specs_with_errors/*.expected: the diagnostics of each broken spec.
- generated/*: the packages of the golden specs, for each backend.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from pathlib import Path

from tests.helpers import ROOT

# (spec, backend, package directory): the examples kept in generated/.
GOLDENS = [
    (spec, backend, f"generated/{name}_{backend}")
    for spec, name in [
        ("specs/resnet34.res", "resnet34"),
        ("specs/resnet50.res", "resnet50"),
        ("specs/cifar/resnet20.res", "cifar_resnet20"),
        ("specs/fashion-mnist/resnet20.res", "fashion_mnist_resnet20"),
        ("specs/torchvision/resnet50.res", "torchvision_resnet50"),
        # the general paths: a block defined in the spec and used as a layer, dilation, and
        # pre-activation blocks with drop path
        ("specs/variants/se_resnet50.res", "variants_se_resnet50"),
        ("specs/variants/resnet50_dilated.res", "variants_resnet50_dilated"),
        ("specs/variants/preact_resnet164_drop_path.res", "variants_preact_resnet164_drop_path"),
    ]
    for backend in ("torch", "jax")
]


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


def generated_packages() -> None:
    from resdsl.compile import compile_spec
    from resdsl.frontend import load_spec

    for spec_path, backend, out in GOLDENS:
        spec, analysis = load_spec(spec_path)
        compile_spec(spec, analysis, backend=backend, output=Path(out))
        print(f"wrote {out}")


def main() -> None:
    os.chdir(ROOT)
    error_snapshots()
    generated_packages()


if __name__ == "__main__":
    main()
