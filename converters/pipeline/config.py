"""What the pipeline does: :class:`Settings` (every option of :func:`deep_compress`) and the defaults."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ..ecvq import DEFAULT_STRENGTH, parse_strength
from ..quantize import INITS
from ..settings import LayerSetting, SettingError, fraction

DEFAULT_SPARSITY = {"conv": 0.6, "fc": 0.9}  # with retraining (the paper reaches 0.65-0.9 on AlexNet/VGG)
DEFAULT_BITS = {"conv": 8, "fc": 5}  # as in the paper
DEFAULT_SCHEDULE = (0.5, 0.75, 0.9, 1.0)  # fractions of each layer's target sparsity, one retraining per step
SCAN_SPARSITIES = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98)
SCAN_BITS = (2, 3, 4, 5, 6, 8)
CURVE_FRACTIONS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.97, 0.99)


def _setting(option: str, value, convert) -> LayerSetting:
    """LayerSetting from None, a number, a {pattern: value} dict, a 'fc*=0.9,0.5' string or a LayerSetting."""
    if isinstance(value, LayerSetting):
        return value
    if value is None:
        return LayerSetting(option)
    if isinstance(value, Mapping):
        s = LayerSetting(option)
        for pat, v in value.items():
            v = convert(str(v))
            if pat in ("*", "default"):
                s.default = v
            else:
                s.patterns.append((str(pat), v))
        return s
    return LayerSetting.parse(option, str(value), convert)


def _bits(text: str) -> int:
    v = int(float(text))
    if not 1 <= v <= 8 or v != float(text):
        raise ValueError(f"{text} bits is not an integer in 1..8")
    return v


@dataclass
class Settings:
    """What :func:`deep_compress` does. Per-layer values take a number (all layers), a
    ``{"fc*": 0.92, "conv*": 0.6}`` dict or the CLI's ``'fc*=0.92,conv*=0.6'`` string; patterns
    match parameter names (``fc1.weight``, ``features.0.weight``)."""

    sparsity: object = None  # target fraction of zero weights per layer; None: DEFAULT_SPARSITY by role
    bits: object = None  # weight-sharing bits per layer; None: DEFAULT_BITS by role
    ecvq: object = None  # entropy-constrained sharing strength per layer (converters.ecvq); None: DEFAULT_STRENGTH
    prune_neurons: object = None  # fraction of whole output neurons / filters to prune per layer
    schedule: tuple = DEFAULT_SCHEDULE  # pruning steps as fractions of the target (last is 1.0)
    separate_phases: bool = False  # prune conv layers first, then fully connected ones
    epochs: int = 0  # training of the dense model before compressing
    retrain_epochs: int = 2  # retraining after each pruning step
    finetune_epochs: int = 2  # centroid fine-tuning
    lr: float = 1e-3  # dense training
    retrain_lr: float | None = None  # default lr / 2
    finetune_lr: float | None = None  # default lr / 4
    batch_size: int = 64
    optimizer: str = "adam"  # or "sgd" (momentum 0.9)
    l1: float = 0.0  # L1 penalty on the compressible weights while (re)training
    l2: float = 0.0  # L2 penalty (sum of squares) on the compressible weights
    prox_l1: float = 0.0  # proximal L1: soft-threshold the compressible weights by lr x prox_l1 after every step
    workers: int = 0  # DataLoader worker processes for Datasets (0: load in the training process)
    init: str = "linear"  # k-means centroid initialisation
    min_size: int = 0  # Linear/Conv weights with fewer elements are kept exact
    max_accuracy_drop: float | None = None  # points; enables the sensitivity scan and the budget check
    scan_sparsities: tuple = SCAN_SPARSITIES
    scan_bits: tuple = SCAN_BITS
    scan_slack: float = 8.0  # scan drops are without retraining (pessimistic): first try budget x slack, halve on failure
    max_backoff: int = 4  # further attempts (halving the scan budget) when the result is over budget
    seed: int = 0

    def __post_init__(self):
        self.sparsity = _setting("--sparsity", self.sparsity, fraction)
        self.bits = _setting("--bits", self.bits, _bits)
        self.ecvq = _setting("--ecvq", self.ecvq, parse_strength)
        if self.ecvq.default is None:
            self.ecvq.default = DEFAULT_STRENGTH
        self.prune_neurons = _setting("--prune-neurons", self.prune_neurons, fraction)
        sched = [float(s) for s in self.schedule]
        if not sched or any(not 0 < s <= 1 for s in sched) or sorted(sched) != sched:
            raise SettingError(f"--schedule: steps must rise within (0, 1], got {self.schedule}")
        if sched[-1] != 1.0:
            sched.append(1.0)
        self.schedule = tuple(sched)
        if self.optimizer not in ("adam", "sgd"):
            raise SettingError(f"--optimizer: {self.optimizer!r} is not adam or sgd")
        if self.init not in INITS:
            raise SettingError(f"--init: {self.init!r} is not one of {', '.join(INITS)}")
        for name in ("epochs", "retrain_epochs", "finetune_epochs", "min_size", "max_backoff", "workers"):
            if int(getattr(self, name)) < 0:
                raise SettingError(f"--{name.replace('_', '-')}: must be >= 0")
        if self.batch_size < 1:
            raise SettingError("--batch-size: must be >= 1")
        for name in ("lr", "l1", "l2", "prox_l1"):
            if not getattr(self, name) >= 0:
                raise SettingError(f"--{name}: must be >= 0")
        if self.max_accuracy_drop is not None and not self.max_accuracy_drop >= 0:
            raise SettingError("--max-accuracy-drop: must be >= 0")
        self.scan_sparsities = tuple(sorted({float(s) for s in self.scan_sparsities} - {0.0}))
        self.scan_bits = tuple(sorted({_bits(str(b)) for b in self.scan_bits}))
        if not self.scan_bits:
            raise SettingError("--scan-bits: give at least one")

    @property
    def retrain_lr_(self) -> float:
        return self.lr / 2 if self.retrain_lr is None else self.retrain_lr

    @property
    def finetune_lr_(self) -> float:
        return self.lr / 4 if self.finetune_lr is None else self.finetune_lr

    def describe(self) -> dict:
        d = {}
        for k in ("sparsity", "bits", "ecvq", "prune_neurons"):
            d[k] = getattr(self, k).describe()
        for k in ("schedule", "separate_phases", "epochs", "retrain_epochs", "finetune_epochs", "lr", "batch_size",
                  "optimizer", "l1", "l2", "init", "min_size", "max_accuracy_drop", "seed"):
            v = getattr(self, k)
            d[k] = list(v) if isinstance(v, tuple) else v
        d["retrain_lr"], d["finetune_lr"] = self.retrain_lr_, self.finetune_lr_
        if self.prox_l1:  # only when used, so that files written without it keep their bytes
            d["prox_l1"] = self.prox_l1
        if self.max_accuracy_drop is not None:
            d.update(scan_sparsities=list(self.scan_sparsities), scan_bits=list(self.scan_bits),
                     scan_slack=self.scan_slack, max_backoff=self.max_backoff)
        return d
