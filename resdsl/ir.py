"""The validated intermediate representation: the contract between the language and backends.

Every value is explicit (defaults filled in, parameters evaluated, `extends` and recipes merged),
and every node keeps the span of the statement it came from, so later checks can point into
the source. Backends read only these models.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveInt, model_validator

DatasetKind = Literal["cifar10", "cifar100", "mnist", "fashion_mnist", "imagefolder", "synthetic"]

Probability = Annotated[float, Field(ge=0.0, lt=1.0)]
PositiveFloat = Annotated[float, Field(gt=0.0)]


class Node(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)

    # Where the node was written (a `Span`, or None for a default). Set by the resolver, never
    # by users, so it is not validated: typed Any, which keeps importing the IR fast.
    span: Any = Field(default=None, exclude=True, repr=False)

    def __eq__(self, other: object) -> bool:
        """Equal when every field but `span` is: where a value was written is not what it is."""
        if type(other) is not type(self):
            return NotImplemented
        return all(
            getattr(self, name) == getattr(other, name)
            for name in type(self).model_fields
            if name not in _NOT_COMPARED
        )

    def __hash__(self) -> int:
        return hash(
            tuple(
                _hashable(getattr(self, n))
                for n in type(self).model_fields
                if n not in _NOT_COMPARED
            )
        )


_NOT_COMPARED = {"span", "definitions"}


def _hashable(value: Any) -> Any:
    return tuple(sorted(value.items())) if isinstance(value, dict) else value


# --- network -------------------------------------------------------------------------------


class Call(Node):
    """A block or stem chosen by name (defined in the prelude or a spec), with the options
    written after it: `block bottleneck, groups 32` has the name `bottleneck` and the arguments
    {groups: 32}.
    Values are numbers, words (`inverted`) or kernel sizes (`(3, 3)`)."""

    name: str
    args: dict[str, Any] = {}


class Stage(Node):
    name: str
    blocks: PositiveInt
    width: PositiveInt  # "planes": a block's output has width * expansion channels
    stride: PositiveInt = 1
    # dilation of the stage's blocks (the first keeps the previous stage's, as torchvision's
    # replace_stride_with_dilation)
    dilation: PositiveInt = 1
    shortcut: str  # a shortcut's name, or "none"
    block: Call

    @property
    def title(self) -> str:
        """How messages name the stage: `stage conv3_x`, or `stage 2` when it has no name."""
        return f"stage {self.name.removeprefix('stage')}"


class Init(Node):
    """He et al.'s normal init for convolutions (`fan_in` as derived in the paper, or `fan_out` as
    torchvision), BN gamma 1 and beta 0, and optionally the last BN gamma of each branch 0."""

    scheme: Literal["kaiming_normal"] = "kaiming_normal"
    mode: Literal["fan_in", "fan_out"] = "fan_in"
    zero_init_residual: bool = False


class BatchNorm(Node):
    """PyTorch's convention: running = (1 - momentum) * running + momentum * batch."""

    momentum: Annotated[float, Field(gt=0.0, le=1.0)] = 0.1
    eps: PositiveFloat = 1e-5


class Norm(Node):
    """What the `batchnorm` layers of blocks, stems and head are: batch normalisation (the
    network's `batchnorm` momentum and eps), or group normalisation with `groups` groups."""

    kind: Literal["batchnorm", "groupnorm"] = "batchnorm"
    groups: PositiveInt = 32
    eps: PositiveFloat = 1e-5


class Head(Node):
    """The head: a head definition's layers after the last stage (`head final_conv, ...`), the
    global average pool, dropout and the classifier."""

    dropout: Probability = 0.0
    call: Call | None = None  # the head definition, and its arguments


class Network(Node):
    name: str
    input: tuple[PositiveInt, PositiveInt, PositiveInt]  # C, H, W
    classes: PositiveInt
    stem: Call
    stages: tuple[Stage, ...] = Field(min_length=1)
    init: Init = Init()
    batchnorm: BatchNorm = BatchNorm()
    norm: Norm = Norm()
    head: Head = Head()
    # stochastic depth: block l of L drops its residual branch with probability drop_path * l / L
    # (`huang`, Huang et al. 2016), or drop_path * (l - 1) / (L - 1) (`timm`: 0 for the first)
    drop_path: Probability = 0.0
    drop_path_rule: Literal["huang", "timm"] = "huang"
    # the names of the modules: torchvision's (conv1, layer1.0, fc) or timm's byobnet's (stem.conv1,
    # stages.0.0, head.fc)
    layout: Literal["torchvision", "byobnet"] = "torchvision"


# --- training ------------------------------------------------------------------------------


class Dataset(Node):
    kind: DatasetKind
    path: str

    @property
    def info(self) -> DatasetInfo | None:
        return DATASETS.get(self.kind)


@dataclass(frozen=True)
class DatasetInfo:
    """What is known of a dataset with a fixed format (image folders are read at run time)."""

    channels: int
    size: int
    classes: int
    train_images: int
    test_images: int
    default_path: str


DATASETS = {
    "cifar10": DatasetInfo(3, 32, 10, 50_000, 10_000, "data/cifar-10-batches-py"),
    "cifar100": DatasetInfo(3, 32, 100, 50_000, 10_000, "data/cifar-100-python"),
    "mnist": DatasetInfo(1, 28, 10, 60_000, 10_000, "data/mnist"),
    "fashion_mnist": DatasetInfo(1, 28, 10, 60_000, 10_000, "/usr/share/datasets/fashion-mnist"),
}
DEFAULT_PATHS = {kind: info.default_path for kind, info in DATASETS.items()} | {
    "imagefolder": "data/imagenet",
    "synthetic": "",
}


class PadTo(Node):
    """Zero-pad every image (train and test) to size x size, centred: Fashion-MNIST 28 -> 32."""

    op: Literal["pad_to"] = "pad_to"
    size: PositiveInt


class SubtractMean(Node):
    """Subtract the training split's mean image (per_pixel) or mean colour (per_channel)."""

    op: Literal["subtract_mean"] = "subtract_mean"
    mode: Literal["per_pixel", "per_channel"] = "per_pixel"


class Normalize(Node):
    """Subtract a mean colour and divide by a standard deviation, on pixels in [0, 1]: ImageNet's
    (`imagenet`), the training split's (`dataset`), or the values written (`given`)."""

    op: Literal["normalize"] = "normalize"
    source: Literal["imagenet", "dataset", "given"] = "imagenet"
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[PositiveFloat, ...] = (0.229, 0.224, 0.225)


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
Interpolation = Literal["nearest", "bilinear", "bicubic"]


class Pad(Node):
    op: Literal["pad"] = "pad"
    pixels: PositiveInt
    mode: Literal["zero", "reflect"] = "zero"


class RandomCrop(Node):
    op: Literal["random_crop"] = "random_crop"
    size: PositiveInt


class HFlip(Node):
    op: Literal["hflip"] = "hflip"


class ScaleShorter(Node):
    """Resize so that the shorter side is uniform in [low, high] (scale augmentation)."""

    op: Literal["scale_shorter"] = "scale_shorter"
    low: PositiveInt
    high: PositiveInt

    @model_validator(mode="after")
    def _ordered(self) -> ScaleShorter:
        if self.low > self.high:
            raise ValueError("scale_shorter needs low <= high")
        return self


class PCALighting(Node):
    """AlexNet's colour augmentation: RGB noise along the principal components, std `std`."""

    op: Literal["pca_lighting"] = "pca_lighting"
    std: PositiveFloat


class RandomResizedCrop(Node):
    """A crop of a random area (a fraction `scale` of the image) and aspect ratio (`ratio`),
    resized to size x size (torchvision's RandomResizedCrop)."""

    op: Literal["random_resized_crop"] = "random_resized_crop"
    size: PositiveInt
    scale: tuple[PositiveFloat, PositiveFloat] = (0.08, 1.0)
    ratio: tuple[PositiveFloat, PositiveFloat] = (3 / 4, 4 / 3)
    interpolation: Interpolation = "bilinear"


class TrivialAugmentWide(Node):
    """One operation of TrivialAugment's wide space at a random magnitude (Müller and Hutter
    2021; torchvision's TrivialAugmentWide)."""

    op: Literal["trivial_augment_wide"] = "trivial_augment_wide"
    interpolation: Interpolation = "nearest"


class RandAugment(Node):
    """`ops` random operations at `magnitude` (of 10), drawn per image from a normal distribution
    of standard deviation `magnitude_std` when it is not 0 (Cubuk et al. 2020; timm's `mstd`)."""

    op: Literal["rand_augment"] = "rand_augment"
    ops: PositiveInt = 2
    magnitude: Annotated[float, Field(ge=0.0, le=10.0)] = 9.0
    magnitude_std: Annotated[float, Field(ge=0.0)] = 0.0
    interpolation: Interpolation = "nearest"


class AutoAugment(Node):
    """AutoAugment's learned ImageNet policy (Cubuk et al. 2019; torchvision's AutoAugment)."""

    op: Literal["auto_augment"] = "auto_augment"
    policy: Literal["imagenet"] = "imagenet"
    interpolation: Interpolation = "nearest"


class RandomErasing(Node):
    """With probability p, a random rectangle of the (normalized) image set to 0 (Zhong et al.
    2020; torchvision's RandomErasing). It runs last, after `preprocess`, as in torchvision."""

    op: Literal["random_erasing"] = "random_erasing"
    p: Annotated[float, Field(gt=0.0, le=1.0)]


Preprocess = Annotated[PadTo | SubtractMean | Normalize, Field(discriminator="op")]
Augment = Annotated[
    Pad
    | RandomCrop
    | HFlip
    | ScaleShorter
    | PCALighting
    | RandomResizedCrop
    | TrivialAugmentWide
    | RandAugment
    | AutoAugment
    | RandomErasing,
    Field(discriminator="op"),
]
POLICIES = ("trivial_augment_wide", "rand_augment", "auto_augment")  # torchvision's, on photos


class SingleView(Node):
    """Arrays: the image as it is. Image folders: shorter side `resize`, centre crop."""

    op: Literal["single_view"] = "single_view"
    resize: PositiveInt | None = None
    interpolation: Interpolation = "bilinear"


class FlipAverage(Node):
    """Arrays: the image and its mirror image, their softmax averaged."""

    op: Literal["flip_average"] = "flip_average"


class TenCrop(Node):
    """Shorter side `resize`; four corner crops and the centre crop, and their flips."""

    op: Literal["ten_crop"] = "ten_crop"
    resize: PositiveInt


class MultiScale(Node):
    """Fully-convolutional: the fc as a 1x1 conv, scores averaged over shorter sides (and flips)."""

    op: Literal["multiscale"] = "multiscale"
    scales: tuple[PositiveInt, ...] = Field(min_length=1)


EvalProtocol = Annotated[SingleView | TenCrop | MultiScale | FlipAverage, Field(discriminator="op")]

Decay = Annotated[float, Field(ge=0.0)]
Beta = Annotated[float, Field(ge=0.0, lt=1.0)]


class SGD(Node):
    kind: Literal["sgd"] = "sgd"
    lr: PositiveFloat
    momentum: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.9
    weight_decay: Decay = 1e-4
    nesterov: bool = False
    # the weight decay of normalization layers' parameters and of biases, when not weight_decay
    # (torchvision's norm_weight_decay and bias_weight_decay)
    norm_weight_decay: Decay | None = None
    bias_weight_decay: Decay | None = None


class AdamW(Node):
    """torch.optim.AdamW / optax.adamw: Adam with decoupled weight decay (Loshchilov and Hutter
    2019)."""

    kind: Literal["adamw"] = "adamw"
    lr: PositiveFloat
    betas: tuple[Beta, Beta] = (0.9, 0.999)
    eps: PositiveFloat = 1e-8
    weight_decay: Decay = 0.01
    norm_weight_decay: Decay | None = None
    bias_weight_decay: Decay | None = None


class Lamb(Node):
    """timm's Lamb (You et al. 2020): Adam's step with the weight decay added, scaled per tensor
    by ||w|| / ||step|| where the tensor is decayed; the gradients first clipped to a global norm
    of `max_grad_norm` (0: not clipped)."""

    kind: Literal["lamb"] = "lamb"
    lr: PositiveFloat
    betas: tuple[Beta, Beta] = (0.9, 0.999)
    eps: PositiveFloat = 1e-6
    weight_decay: Decay = 0.01
    max_grad_norm: Decay = 1.0
    norm_weight_decay: Decay | None = None
    bias_weight_decay: Decay | None = None


Optimizer = Annotated[SGD | AdamW | Lamb, Field(discriminator="kind")]


class MultiStep(Node):
    """Multiply the learning rate by `factor` at each milestone (in the length's unit)."""

    kind: Literal["multistep"] = "multistep"
    factor: PositiveFloat
    milestones: tuple[PositiveInt, ...] = Field(min_length=1)


class Plateau(Node):
    """Multiply the learning rate by `factor` when the validation error has not improved by
    `threshold` (absolute) for `patience` validations in a row."""

    kind: Literal["on_plateau"] = "on_plateau"
    factor: PositiveFloat
    patience: PositiveInt = 5
    threshold: Annotated[float, Field(ge=0.0)] = 0.001


class Constant(Node):
    kind: Literal["constant"] = "constant"


class Cosine(Node):
    """From the lr (after any warm-up) to `min_lr` along half a cosine over the rest of training
    (torch's CosineAnnealingLR, optax's cosine_decay_schedule), changed every iteration or every
    epoch."""

    kind: Literal["cosine"] = "cosine"
    min_lr: Annotated[float, Field(ge=0.0)] = 0.0
    per: Literal["iteration", "epoch"] = "iteration"


class Piecewise(Node):
    """The lr times a factor that is linear between points (fraction of training, factor):
    one-cycle and the fast CIFAR schedules. The first point is at 0, the last at 1."""

    kind: Literal["piecewise"] = "piecewise"
    points: tuple[tuple[Annotated[float, Field(ge=0.0, le=1.0)], Decay], ...] = Field(min_length=2)


Schedule = Annotated[
    MultiStep | Plateau | Constant | Cosine | Piecewise, Field(discriminator="kind")
]


class WarmupUntil(Node):
    """Train at `lr` until the training error (mean of the last 100 iterations) is below
    `train_error`, then at the optimizer's lr (ResNet-110 on CIFAR)."""

    kind: Literal["until"] = "until"
    lr: PositiveFloat
    train_error: Annotated[float, Field(gt=0.0, le=1.0)]


class WarmupFor(Node):
    """Train at `lr` for the first `length` units (the length's unit), then at the optimizer's lr."""

    kind: Literal["for"] = "for"
    lr: PositiveFloat
    length: PositiveInt


class WarmupLinear(Node):
    """The lr times a factor rising linearly from `start_factor` to 1 over the first `length`
    units (torch's LinearLR; torchvision's `--lr-warmup-method linear`); the schedule then runs
    over the rest of training."""

    kind: Literal["linear"] = "linear"
    start_factor: Annotated[float, Field(gt=0.0, le=1.0)]
    length: PositiveInt


Warmup = Annotated[WarmupUntil | WarmupFor | WarmupLinear, Field(discriminator="kind")]


class CrossEntropy(Node):
    """Softmax cross entropy, the targets smoothed by `label_smoothing` (Szegedy et al. 2016)."""

    kind: Literal["cross_entropy"] = "cross_entropy"
    label_smoothing: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0


class BinaryCrossEntropy(Node):
    """Sigmoid cross entropy over the classes (timm's BinaryCrossEntropy, "ResNet strikes
    back"): each class a yes/no target, smoothed, then (with `target_threshold`) made 1 where it
    exceeds the threshold and 0 elsewhere."""

    kind: Literal["bce"] = "bce"
    label_smoothing: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0
    target_threshold: Annotated[float, Field(ge=0.0, lt=1.0)] | None = None


Loss = Annotated[CrossEntropy | BinaryCrossEntropy, Field(discriminator="kind")]


class Mix(Node):
    """Batch mixing: each batch mixed by mixup (Zhang et al. 2018) or cutmix (Yun et al. 2019),
    one of those given chosen with equal probability, their λ drawn from Beta(alpha, alpha)."""

    mixup: PositiveFloat | None = None
    cutmix: PositiveFloat | None = None


class EMA(Node):
    """An exponential moving average of the weights and BN statistics, updated every `every`
    iterations with `decay` (torch.optim.swa_utils.AveragedModel, optax.incremental_update);
    `adjust` scales it as torchvision's references do (by batch x every / epochs)."""

    decay: Annotated[float, Field(gt=0.0, lt=1.0)]
    every: PositiveInt = 1
    adjust: bool = False


class Length(Node):
    value: PositiveInt
    unit: Literal["iterations", "epochs"]


class Train(Node):
    recipe: str | None
    data: Dataset
    preprocess: tuple[Preprocess, ...] = ()
    augment: tuple[Augment, ...] = ()
    optimizer: Optimizer
    batch: PositiveInt
    # repeated augmentation (Hoffer et al. 2020; torchvision's RASampler): each image K times
    repeats: PositiveInt = 1
    schedule: Schedule = Constant()
    warmup: Warmup | None = None
    length: Length
    eval: tuple[EvalProtocol, ...] = Field(min_length=1)
    val_split: NonNegativeInt = 0
    validate_every: PositiveInt | None = None
    loss: Loss = CrossEntropy()
    mix: Mix | None = None
    ema: EMA | None = None
    precision: Literal["fp32", "bf16"] | None = None  # None: the trainer's default for the device


class Spec(Node):
    """One resolved spec: the network, its training section, and where it came from."""

    path: str
    network: Network
    train: Train | None
    params: dict[str, int | float] = {}
    files: tuple[str, ...] = ()  # every file read: the spec, the specs it extends, recipes
    # the blocks, stems and shortcuts it can use (`definitions.Definitions`), read by `lower`
    definitions: Any = Field(default=None, exclude=True, repr=False)
