"""torchvision's builder protocol for the models that have torchvision twins:
``builder(num_classes=1000, *, weights=None, progress=True, **kwargs)``.

``weights``: None (random initialisation), a torchvision ``WeightsEnum`` member
(``ResNet50_Weights.IMAGENET1K_V2``) or its name as a string (needs torchvision;
with torchvision installed a member of another model's enum is refused before
any download): its ``state_dict`` loads with ``strict=True`` (our keys are
torchvision's), and ``num_classes`` must be its category count where it has
one, as torchvision requires.
"""
from __future__ import annotations

from typing import Callable

from torch import nn

__all__ = ["build", "fixed"]


def _resolve(weights, name: str):
    """The builder's torchvision weights enum member that ``weights`` is or names
    (torchvision's ``verify``, where torchvision is installed)."""
    if weights is None:
        return None
    try:
        import torchvision
    except ImportError as error:
        if not isinstance(weights, str):
            return weights
        raise ImportError(f"{name}(weights={weights!r}): a weights name needs torchvision; pass None or a "
                          "torchvision WeightsEnum member") from error
    return torchvision.models.get_model_weights(name).verify(weights)


def build(name: str, make: Callable[[int], nn.Module], num_classes: int, weights, progress: bool) -> nn.Module:
    """``make(num_classes)``, then ``weights`` loaded into it (see the module docstring).
    torchvision's legacy bool (``pretrained``, first positional; a bool as ``weights``)
    raises TypeError: here the first positional argument is num_classes."""
    for argument, value in (("num_classes", num_classes), ("weights", weights)):
        if isinstance(value, bool):
            raise TypeError(f"{name}(): {argument} must not be a bool, got {value} (torchvision's legacy "
                            "pretrained=True is weights=\"DEFAULT\", False is weights=None)")
    weights = _resolve(weights, name)
    if weights is not None and weights.meta.get("categories") is not None:
        categories = len(weights.meta["categories"])
        if num_classes != categories:
            raise ValueError(f"{name}(): weights {weights} have {categories} categories, got num_classes="
                             f"{num_classes}")
    model = make(num_classes)
    if weights is not None:
        model.load_state_dict(weights.get_state_dict(progress=progress, check_hash=True))
    return model


def fixed(kwargs: dict, name: str, value, builder: str) -> dict:
    """``kwargs`` with ``name`` set to the builder's ``value`` (a different value given
    raises ValueError, as torchvision's builders)."""
    if kwargs.get(name, value) != value:
        raise ValueError(f"{builder}(): {name} is {value!r} for this network, got {kwargs[name]!r}")
    return {**kwargs, name: value}
