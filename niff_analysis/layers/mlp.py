"""Coordinate MLPs that map a frequency coordinate (u, v) to per-channel filter values."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields

from torch import nn

_ACTIVATIONS = {"silu": nn.SiLU, "relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}


@dataclass(frozen=True)
class MLPConfig:
    """Hidden sizes and activation of a frequency MLP (input 2, output C, linear output)."""

    hidden: tuple[int, ...]
    activation: str = "silu"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["hidden"] = list(self.hidden)
        return d


# Paper Appendix H (SPEC §2). `tiny` is the one used by full NIFF ("NIFF 2D conv").
MLP_PRESETS: dict[str, MLPConfig] = {
    "big": MLPConfig((16, 128, 32), "silu"),
    "small": MLPConfig((8, 4), "silu"),
    "cifar": MLPConfig((32,), "relu"),
    "tiny": MLPConfig((8,), "silu"),
}

MLPSpec = str | MLPConfig | dict | Sequence[int]
#: The keys an MLP given as a dict takes.
MLP_FIELDS = tuple(f.name for f in fields(MLPConfig))


def resolve_mlp(spec: MLPSpec) -> MLPConfig:
    """Turn a preset name, dict, hidden-size list or MLPConfig into an MLPConfig.

    Raises:
        ValueError: unknown preset, activation or dict key, or a non-positive hidden size.
    """
    if isinstance(spec, MLPConfig):
        cfg = spec
    elif isinstance(spec, str):
        if spec not in MLP_PRESETS:
            raise ValueError(f"unknown MLP preset {spec!r}; choose from {sorted(MLP_PRESETS)}")
        cfg = MLP_PRESETS[spec]
    elif isinstance(spec, dict):
        unknown = sorted(set(spec) - set(MLP_FIELDS))
        if unknown or "hidden" not in spec:  # a misspelled key would silently change the model
            raise ValueError(
                f"unknown MLP setting {unknown[0]!r}; an MLP takes {', '.join(MLP_FIELDS)}"
                if unknown
                else "an MLP given as a dict needs 'hidden' (its hidden sizes)"
            )
        cfg = MLPConfig(tuple(int(h) for h in spec["hidden"]), spec.get("activation", "silu"))
    else:
        cfg = MLPConfig(tuple(int(h) for h in spec))
    if cfg.activation not in _ACTIVATIONS:
        raise ValueError(f"unknown activation {cfg.activation!r}; choose from {sorted(_ACTIVATIONS)}")
    if any(h <= 0 for h in cfg.hidden):
        raise ValueError(f"MLP hidden sizes must be positive, got {list(cfg.hidden)}")
    return cfg


def build_mlp(cfg: MLPConfig, out_features: int) -> nn.Sequential:
    """2 → hidden… → out_features with biases, activation between layers, linear output.

    Applied to a (N, 2) batch of coordinates; identical to the paper's stack of 1×1
    convolutions over a 2-channel coordinate image.
    """
    sizes = [2, *cfg.hidden, out_features]
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(_ACTIVATIONS[cfg.activation]())
    return nn.Sequential(*layers)
