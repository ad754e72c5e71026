"""One registry of named audio transforms with validated parameters: the robustness
deformations (`pipelines.core.deformations.Deformation`, run by `perturb` and evaluated by
`robustness`) and the training augmentations (`Augmentation`, chained by
`tagtrain.training.augment_chain`).

A transform is a frozen dataclass: its fields are its parameters, its `kind` the name a
YAML/JSON entry uses. Defining a subclass with a `kind` registers it under its family, so
adding a transform is one class in one file. The two families keep separate namespaces
(a "noise" deformation and a "noise" augmentation differ, and saved sets and chains name
them so); `parse` checks an entry the same way for both: a known name, no unknown or
missing parameter, then the class's own `validate`.
"""

from __future__ import annotations

import math
import numbers
import typing
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, fields
from typing import ClassVar

from pipelines.core.errors import UserError

# family -> kind -> class; filled by subclasses as they are defined.
REGISTRY: dict[str, dict[str, type[Transform]]] = {}


class TransformError(UserError, ValueError):
    """A bad transform entry or parameter; the message is one line."""


@dataclass(frozen=True, kw_only=True)
class Transform:
    """Base of every named transform. A family base sets `family`, `noun` (how its
    entries' names are called in messages) and `error` (its error class); a concrete
    transform sets `kind`."""

    family: ClassVar[str] = ""
    noun: ClassVar[str] = "transform"
    error: ClassVar[type[TransformError]] = TransformError
    kind: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "kind" in cls.__dict__ and cls.kind:
            kinds = REGISTRY.setdefault(cls.family, {})
            if cls.kind in kinds:
                raise TypeError(f"{cls.family} {cls.kind!r} defined twice")
            kinds[cls.kind] = cls

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Check (and normalise, with object.__setattr__) the parameters."""

    def params(self) -> dict:
        """The parameters as plain JSON (tuples as lists)."""
        return {
            f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v
            for f in fields(self)
        }


def lookup(base: type[Transform], kind) -> type[Transform]:
    known = REGISTRY.get(base.family, {})
    if kind not in known:
        raise base.error(f"unknown {base.noun} {kind!r}; expected one of {', '.join(known)}")
    return known[kind]


def check_parameters(cls: type[Transform], values: Mapping) -> None:
    """No unknown parameter, none without a default missing."""
    allowed = [f.name for f in fields(cls)]
    unknown = sorted(set(values) - set(allowed))
    if unknown:
        raise cls.error(
            f"{cls.kind}: unknown parameter(s) {', '.join(unknown)}; "
            f"expected {', '.join(sorted(allowed))}"
        )
    missing = sorted(
        f.name
        for f in fields(cls)
        if f.name not in values and f.default is MISSING and f.default_factory is MISSING
    )
    if missing:
        raise cls.error(f"{cls.kind}: missing parameter(s) {', '.join(missing)}")


def parse(base: type[Transform], kind, values: Mapping) -> Transform:
    """The transform of family `base` named `kind` with parameters `values`, checked."""
    cls = lookup(base, kind)
    check_parameters(cls, values)
    try:
        return cls(**values)
    except TypeError as exc:  # a parameter of the wrong shape reaching the dataclass
        raise cls.error(f"{kind}: {exc}") from None


def number(value, what: str, error: type[TransformError] = TransformError) -> float:
    """A finite real number (not a bool) as float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise error(f"{what} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise error(f"{what} must be finite, got {value!r}")
    return float(value)


def field_types(cls: type) -> dict[str, type]:
    """Each field's annotated type (strings resolved)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in fields(cls)}


class AugmentationError(TransformError):
    """A bad augmentation entry."""


@dataclass(frozen=True, kw_only=True)
class Augmentation(Transform):
    """A training augmentation: applied to a crop with probability `p`, drawing its
    randomness from the global `random` / `numpy.random` generators (the chain seeds
    them per crop). A subclass either builds an audiomentations transform (`build`) or
    says what it does to float32 mono PCM (`process(samples, sample_rate)`). Fields are
    checked against their annotations (a float takes any real number but a bool)."""

    family: ClassVar[str] = "augmentation"
    error: ClassVar[type[TransformError]] = AugmentationError
    p: float = 1.0

    def validate(self) -> None:
        for name, want in field_types(type(self)).items():
            value = getattr(self, name)
            if not _matches(value, want):
                raise self.error(f"{self.kind}: {name} must be a {want.__name__}, got {value!r}")
            if want is float:
                object.__setattr__(self, name, float(value))
        if not 0.0 <= self.p <= 1.0:
            raise self.error(f"{self.kind}: p must lie within 0..1, got {self.p}")
        self.check()

    def check(self) -> None:
        """Range checks of the subclass's own parameters."""

    def build(self):
        """A callable (samples, sample_rate) -> samples with audiomentations'
        `parameters["should_apply"]`; by default one around `process`."""
        return _Applied(self)

    def process(self, samples, sample_rate: int):
        raise NotImplementedError(f"{type(self).__name__} defines neither build nor process")


def _matches(value, want) -> bool:
    """`value` fits a field annotated `want`: any real number (not a bool) for float, an
    instance for another plain type; other annotations are the subclass's to check."""
    if want is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not isinstance(want, type):
        return True
    return isinstance(value, want) and not (want is int and isinstance(value, bool))


class _Applied:
    """`Augmentation.process` behind audiomentations' calling convention: fires when
    `random.random() < p`, as audiomentations' transforms do."""

    def __init__(self, augmentation: Augmentation):
        self.augmentation = augmentation
        self.parameters = {"should_apply": False}

    def __call__(self, samples, sample_rate: int):
        import random

        self.parameters = {"should_apply": random.random() < self.augmentation.p}
        if not self.parameters["should_apply"]:
            return samples
        return self.augmentation.process(samples, sample_rate)
