"""resdsl.create_model and resdsl.create_flax_model: a spec's network in memory, as the compiled
package builds it, without a package directory; build_model(num_classes=...) in a package."""

from __future__ import annotations

import pickle
import subprocess
import sys

import pytest

import resdsl
from tests.helpers import ROOT

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")


def test_create_model_is_torchvisions_resnet50():
    model = resdsl.create_model(ROOT / "specs/torchvision/resnet50.res")
    reference = torchvision.models.resnet50()
    model.load_state_dict(reference.state_dict(), strict=True)
    model.eval(), reference.eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(images), reference(images))


def test_classes_and_parameters_are_arguments():
    model = resdsl.create_model(ROOT / "specs/torchvision/resnet18.res", num_classes=5)
    assert model.fc.out_features == 5
    assert sum(p.numel() for p in model.parameters()) == 11_179_077  # resnet18(num_classes=5)
    resnet56 = resdsl.create_model(ROOT / "specs/cifar/resnet20.res", n=9)
    assert sum(p.numel() for p in resnet56.parameters()) == 853_018  # the paper's ResNet-56
    pickle.loads(pickle.dumps(resnet56))  # its module is importable by name


def test_a_spec_that_does_not_check_is_a_value_error_with_its_diagnostics(tmp_path):
    with pytest.raises(ValueError, match="unknown parameter `depth`"):
        resdsl.create_model(ROOT / "specs/cifar/resnet20.res", depth=3)
    bad = tmp_path / "bad.res"
    bad.write_text("network x {\n    input 3x32x32\n}\n")
    with pytest.raises(ValueError, match="bad.res:1:1: error: network `x` has no `classes`"):
        resdsl.create_model(bad)


def test_a_packages_build_model_takes_the_classes():
    sys.path.insert(0, str(ROOT / "generated" / "cifar_resnet20_torch"))
    try:
        import model
    finally:
        sys.path.pop(0)
        sys.modules.pop("model", None)
    assert model.build_model(num_classes=5).fc.out_features == 5
    assert model.build_model().fc.out_features == 10


def test_import_resdsl_imports_no_framework():
    code = (
        "import sys, resdsl; print(sorted(m for m in ('torch', 'jax', 'flax') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.stdout.strip() == "[]", result.stderr


def test_create_flax_model_is_the_jax_packages_network():
    jax = pytest.importorskip("jax")
    module, init = resdsl.create_flax_model(ROOT / "specs/cifar/resnet20.res", num_classes=5)
    variables = init(0)
    count = sum(x.size for x in jax.tree.leaves(variables["params"]))
    assert count == 269_722 - 64 * 5 - 5  # the paper's ResNet-20 with a 5-class fc
    assert variables["params"]["fc"]["bias"].shape == (5,)
    images = jax.numpy.ones((2, 32, 32, 3))
    assert module.apply(variables, images).shape == (2, 5)
