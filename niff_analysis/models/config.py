"""What a model is built from: :class:`ModelConfig`, the record that
:func:`~niff_analysis.models.create_model` and :func:`~niff_analysis.models.build_model` attach
to every model they build (``model.niff_config``) and that a checkpoint stores as its
``architecture`` and ``model_kwargs``.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from .._types import Size, input_hw


def is_builder(name: str) -> bool:
    """Whether ``name`` names a builder (``torchvision:NAME`` or ``module:function``), not a
    registered model."""
    return ":" in str(name)


@dataclass(frozen=True, eq=False)
class ModelConfig(Mapping):
    """How a model was built, enough to build it again: a registered name with the keyword
    arguments of :func:`~niff_analysis.models.create_model`, or a builder with those of
    :func:`~niff_analysis.models.build_model`.

    The typed views (:attr:`input_size`, :attr:`in_chans`, :attr:`stem`, :attr:`mlp`,
    :attr:`mode`, :attr:`num_classes`) say what the model is whichever way it was built. As a
    read-only mapping it is the dict earlier versions attached to a model (``name`` and the
    keyword arguments), so ``model.niff_config["input_size"]`` reads as it always did.

    Attributes:
        architecture: a registered name (``resnet18_niff``) or a builder (``torchvision:NAME``,
            ``package.module:function``).
        kwargs: the keyword arguments, JSON values in the order a checkpoint's
            ``model_kwargs`` records them (a copy of the dict given).
    """

    architecture: str
    kwargs: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Its own copy: a caller's dict changed later must not change what rebuilds the model.
        object.__setattr__(self, "kwargs", copy.deepcopy(dict(self.kwargs)))

    @classmethod
    def of(cls, model: nn.Module) -> ModelConfig | None:
        """The config a model was built from (``model.niff_config``), or ``None`` if it records
        none. A plain dict there (a model built by hand the way earlier versions did) is read
        as one."""
        cfg = getattr(model, "niff_config", None)
        if cfg is None or isinstance(cfg, ModelConfig):
            return cfg
        return cls(cfg["name"], {k: v for k, v in cfg.items() if k != "name"})

    # ---- what the model is ------------------------------------------------------------
    @property
    def is_builder(self) -> bool:
        """Built by a builder (torchvision or a user factory), not from the registry."""
        return is_builder(self.architecture)

    @property
    def niff(self) -> dict | None:
        """A builder's :func:`~niff_analysis.models.to_niff` settings (``None``: not converted,
        or a registered model)."""
        return self.kwargs.get("niff") if self.is_builder else None

    @property
    def stem(self) -> str | None:
        """``"imagenet"`` or ``"cifar"`` for a registered model; ``None`` for a builder's."""
        return None if self.is_builder else self.kwargs.get("stem", "imagenet")

    @property
    def input_size(self) -> Size:
        """The input (H, W) the model runs at (the NIFF layers are sized for)."""
        return input_hw(self.kwargs.get("input_size"), self.stem)

    @property
    def in_chans(self) -> int | None:
        """Input channels as recorded (``None``: not recorded; the first conv's then)."""
        value = self.kwargs.get("in_chans")
        return None if value is None else int(value)

    @property
    def num_classes(self) -> int | None:
        """Classifier outputs as recorded (``None``: not recorded; the builder's default then)."""
        kw = (self.kwargs.get("builder_kwargs") or {}) if self.is_builder else self.kwargs
        value = kw.get("num_classes")
        return None if value is None else int(value)

    @property
    def mlp(self) -> dict | None:
        """The frequency MLPs' config (``None``: no NIFF layers recorded)."""
        return (self.niff or {}).get("mlp") if self.is_builder else self.kwargs.get("mlp")

    @property
    def mode(self) -> str | None:
        """The NIFF convolution mode (``None``: a builder's model kept without NIFF layers)."""
        if self.is_builder:
            return (self.niff or {}).get("mode")
        return self.kwargs.get("mode", "circular")

    def build(self, factory: str | None = None) -> nn.Module:
        """The model this config describes, freshly initialised.

        Args:
            factory: for a ``package.module:function`` builder, the same string: you agree to
                run it.
        """
        from .build import rebuild

        return rebuild(self.architecture, self.kwargs, factory=factory)

    # ---- the mapping earlier versions attached ------------------------------------------
    def _as_dict(self) -> dict:
        return {"name": self.architecture, **self.kwargs}

    def __getitem__(self, key: str) -> Any:
        return self._as_dict()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._as_dict())

    def __len__(self) -> int:
        return len(self._as_dict())
