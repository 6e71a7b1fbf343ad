"""A user's own CNN factory, for the tests of ``package.module:function`` builders."""

from os import system as sneaky  # noqa: F401 - a re-exported os.system: never a factory

from torch import nn


def tiny_cnn(num_classes: int = 10, width: int = 8) -> nn.Module:
    """Two 3×3 convs and a 5×5 depthwise conv on a 16×16 map, then a classifier."""
    return nn.Sequential(
        nn.Conv2d(1, width, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(width, width, 5, padding=2, groups=width),
        nn.ReLU(),
        nn.Conv2d(width, width, 3, padding=1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(width, num_classes),
    )


CALLED = []


def record_call(**kwargs) -> nn.Module:
    CALLED.append(kwargs)
    return tiny_cnn()


def _private() -> nn.Module:
    """Private by name: never a factory a checkpoint may name."""
    return tiny_cnn()
