"""The names of generated code, in one place: what a layer's name may be, and how parameters,
values and classes get Python names that nothing else in the code uses (as torch.fx's
`_Namespace`).

A layer's name is an attribute of the generated class and a state_dict key, so it is the user's
to choose and is never changed: a name the class needs for itself is refused at the layer. A
parameter's or a value's name is only a Python name: where it is one the generated code uses
(`x`, `nn`, `self`), it is spelled with a trailing underscore (`x_`).
"""

from __future__ import annotations

import keyword
import re

PYTHON_KEYWORDS = frozenset(keyword.kwlist) | frozenset(keyword.softkwlist) - {"_"}

# Attributes and methods of torch.nn.Module (torch 2.x) and flax.linen.Module, and the ones each
# generated block keeps for itself: a layer of that name would replace one of them.
TORCH_MODULE = frozenset(
    """
    add_module apply bfloat16 buffers call_super_init children compile cpu cuda double
    dump_patches eval extra_repr float forward get_buffer get_extra_state get_parameter
    get_submodule half ipu load_state_dict modules mtia named_buffers named_children
    named_modules named_parameters parameters register_backward_hook register_buffer
    register_forward_hook register_forward_pre_hook register_full_backward_hook
    register_full_backward_pre_hook register_load_state_dict_post_hook
    register_load_state_dict_pre_hook register_module register_parameter
    register_state_dict_post_hook register_state_dict_pre_hook requires_grad_ set_extra_state
    set_submodule share_memory state_dict to to_empty train training type xpu zero_grad
    T_destination
""".split()
)
FLAX_MODULE = frozenset(
    """
    apply bind clone copy get_variable has_rng has_variable init init_with_output is_initializing
    is_mutable_collection lazy_init make_rng module_paths name param parent path perturb
    put_variable scope setup sow tabulate unbind variable variables
""".split()
)
# (`norm`, the JAX field of the network's norm, is refused where a class has that field: lower.py)
BLOCK_ATTRIBUTES = frozenset({"downsample", "expansion", "shortcut"})
# The network class's own names: its stages are layer1, layer2, ...
NETWORK_ATTRIBUTES = frozenset({
    "avgpool", "bn_final", "dilation", "dropout", "fc", "features_only", "forward_features",
    "inplanes", "num_classes", "stem", "stages", "head",
})  # fmt: skip
STAGE_ATTRIBUTE = re.compile(r"layer\d+$")

# Every name the printers write in a class or at the top of model.py: a parameter or value of a
# definition that is spelled like one of them is renamed in the code.
PRINTER_NAMES = (
    frozenset(
        """
    self x out identity outplanes inplanes downsample norm train shortcut name parent torch nn
    F jax jnp partial Any Callable ModuleDef kaiming_normal uniform conv3x3 conv1x1 avg_pool
    zero_pad_shortcut DropPath ZeroPadShortcut ResNet build_model init_variables logits int
    float bool str tuple list dict type super isinstance range len print part parts enumerate
""".split()
    )
    | PYTHON_KEYWORDS
)

# Names given by the network to every definition, which a definition cannot redefine.
GIVEN = frozenset({"inplanes", "preact"})


def shortcut_attribute(layout: str) -> str:
    """A block's shortcut module: torchvision's `downsample`, timm's byobnet's `shortcut`."""
    return "shortcut" if layout == "byobnet" else "downsample"


def stage_attribute(layout: str, index: int) -> str:
    """Stage `index` (from 0): torchvision's `layer1`, ..., timm's byobnet's `stages.0`, ..."""
    return f"stages.{index}" if layout == "byobnet" else f"layer{index + 1}"


def label_problem(name: str, scope: str) -> str | None:
    """Why `name` cannot name a layer of a block (`scope` "block") or of the stem ("network")."""
    if name in PYTHON_KEYWORDS:
        return f"`{name}` is a Python keyword"
    if name.startswith("_"):
        return f"`{name}` starts with `_`, as PyTorch's and Flax's own attributes do"
    if name in TORCH_MODULE or name in FLAX_MODULE:
        return f"`{name}` is an attribute every PyTorch or Flax module has"
    if scope == "block" and name in BLOCK_ATTRIBUTES:
        return f"`{name}` is a name every generated block keeps for itself"
    if scope == "network" and (name in NETWORK_ATTRIBUTES or STAGE_ATTRIBUTE.match(name)):
        return f"`{name}` is a name the network class keeps for itself (its head, its stages)"
    if re.search(r"_\d+$", name):
        return (
            f"`{name}` ends in `_` and a number, which reads as the number of a layer in a "
            "group (the JAX package names `downsample.0` `downsample_0`)"
        )
    return None


def value_problem(name: str) -> str | None:
    """Why `name` cannot name a parameter or a value (`NAME = ...`) of a definition."""
    if name in PYTHON_KEYWORDS:
        return f"`{name}` is a Python keyword"
    if name in GIVEN:
        return f"`{name}` is given to every definition by the network"
    if name.startswith("_"):
        return f"`{name}` starts with `_`"
    return None


class Namespace:
    """Unique names: `take(base)` gives `base`, or `base2`, `base3`, ... when it is taken."""

    def __init__(self, taken=()) -> None:
        self.taken = set(taken)

    def take(self, base: str) -> str:
        name, number = base, 1
        while name in self.taken:
            number += 1
            name = f"{base}{number}"
        self.taken.add(name)
        return name


def python_name(name: str) -> str:
    """A definition's parameter or value as a Python name: `x` -> `x_` where the code uses `x`."""
    while name in PRINTER_NAMES:
        name += "_"
    return name
