"""Self-describing checkpoints: ``config.json`` + ``model.safetensors`` in a directory, or a
single ``.safetensors`` file carrying the same config in its metadata. Checkpoints of the
authors' public code (``.pt``/``.pth`` dicts with the state dict under ``model``, SPEC §6)
are imported by :func:`import_reference_checkpoint`; pickles are only ever read with
``torch.load(weights_only=True)``.

``config.json`` records everything needed to rebuild the model (registry name and keyword
arguments), the feature-map size of every NIFF layer, and the training provenance (dataset,
recipe, seed, final test accuracy, versions). Training state for ``--resume`` lives apart, in
``train_state.pt``.

A config is read and validated once into a :class:`CheckpointConfig` (the checkpoint's typed
identity); a :class:`Checkpoint` is a checkpoint on disk with that config, whose
:meth:`~Checkpoint.model`, :meth:`~Checkpoint.initial` and :meth:`~Checkpoint.images` give the
model, the model its training started from and test images as the model saw them.
"""

from __future__ import annotations

import errno
import hashlib
import inspect
import json
import os
import re
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import save
from torch import nn

from . import __version__
from ._types import PathLike, Size, as_hw
from .device import resolve_device
from .errors import CheckpointError, DataError, NiffError
from .io import atomic_write, file_sha256
from .models import ModelConfig, create_model, niff_layers
from .runs import CONFIG_NAME, INIT_DIR, TRAIN_STATE_NAME, WEIGHTS_NAME, unfinished_reason

FORMAT = "niff-analysis-checkpoint"
FORMAT_VERSION = 1
PICKLE_SUFFIXES = (".pt", ".pth", ".pth.tar", ".ckpt")
BUNDLED_DIR = Path(__file__).parent / "checkpoints"
DEFAULT_CHECKPOINT = BUNDLED_DIR / "resnet18_niff_fmnist"


class NonFiniteWeightsError(CheckpointError):
    """A checkpoint's weights hold NaN or Inf (e.g. a run that diverged)."""


# --------------------------------------------------------------------------- names and paths
def bundled_checkpoints() -> list[str]:
    """Names of the checkpoints that ship with the package (e.g. ``resnet18_niff_fmnist``)."""
    if not BUNDLED_DIR.is_dir():
        return []
    return sorted(p.name for p in BUNDLED_DIR.iterdir() if (p / CONFIG_NAME).is_file())


def resolve_checkpoint(path: PathLike) -> Path:
    """A checkpoint argument as a path: an existing path as given, else the bundled checkpoint of
    that name (``resnet18_fmnist`` from any working directory), else the path as given (whose
    loading then says what is wrong with it)."""
    p = Path(path)
    if not os.path.lexists(p) and len(p.parts) == 1 and p.name in bundled_checkpoints():
        return BUNDLED_DIR / p.name
    return p


def check_readable_path(path: Path) -> None:
    """Refuse a path that cannot even be looked at (a symbolic-link loop, a link to nothing).

    Raises:
        CheckpointError: naming the path.
    """
    try:
        os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise CheckpointError(f"{path}: a symbolic link to a missing file ({os.readlink(path)})") from None
        raise CheckpointError(f"{path}: no such file or directory") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise CheckpointError(f"{path}: a loop of symbolic links (it leads to no file)") from None
        raise CheckpointError(f"{path}: cannot be read ({exc.strerror or exc})") from None


def torch_load_reason(exc: BaseException) -> str:
    """Why ``torch.load(weights_only=True)`` failed, as one short sentence of its own words
    (torch's message is a paragraph of advice, colour codes and a link)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    found = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\n\n|$)", text, re.S)
    if found:
        return " ".join(found.group(1).split()).rstrip(".")
    if (
        isinstance(exc, (KeyError, EOFError, UnicodeDecodeError))
        or "invalid load key" in text
        or "could not find" in text.lower()
    ):
        return "not a file torch.save wrote (no pickle or zip archive in it)"
    first = next((ln.strip() for ln in text.splitlines() if ln.strip()), type(exc).__name__)
    sentence = re.split(r"(?<=[.!?])\s", first)[0]
    return sentence if len(sentence) <= 200 else sentence[:200].rsplit(" ", 1)[0] + " …"


# --------------------------------------------------------------------------- the config's fields
#: Every field a checkpoint config may hold (what save_checkpoint, the trainer and the importers
#: write); a config with any other field is refused, so a misspelled key never passes silently.
#: ``note`` is free text for people.
CONFIG_FIELDS = frozenset(
    {
        "format",
        "format_version",
        "architecture",
        "model_kwargs",
        "num_params",
        "layers",
        "versions",
        "weights_sha256",
        "dataset",
        "recipe",
        "epochs",
        "seed",
        "test_acc",
        "test_loss",
        "world_size",
        "replica_sha256",
        "imported_from",
        "source_file",
        "source_sha256",
        "note",
    }
)
#: The recipe a trained checkpoint records (train/trainer.py _checkpoint_meta).
RECIPE_FIELDS = frozenset(
    {
        "epochs",
        "batch_size",
        "lr",
        "momentum",
        "weight_decay",
        "label_smoothing",
        "augment",
        "schedule",
        "optimizer",
        "mlp_weight_decay",
        "mlp_lr_scale",
        "mlp_bias_decay",
        "content_scale",
        "precision",
    }
)
LAYER_FIELDS = frozenset({"name", "kind", "in_channels", "out_channels", "fmap"})
VERSION_FIELDS = frozenset({"niff_analysis", "torch"})


#: The provenance fields a config may record (where its weights and their run come from).
PROVENANCE_FIELDS = (
    "versions",
    "weights_sha256",
    "world_size",
    "replica_sha256",
    "imported_from",
    "source_file",
    "source_sha256",
    "note",
    "step",
    "training_state",
)


def _fmap(value) -> Size | None:
    try:
        return as_hw(value) if value is not None else None
    except ValueError:
        return None  # a malformed entry: loading the weights names the layer (load_checkpoint)


# --------------------------------------------------------------------------- the identity
@dataclass(frozen=True, eq=False)
class CheckpointConfig(Mapping):
    """A checkpoint's identity: the model it holds, what it was trained on and how, and where it
    comes from; read and validated once (:meth:`read`, :meth:`parse`).

    Every model this module loads carries one as ``model.niff_checkpoint``. As a read-only
    mapping it is the config as recorded plus ``path`` and ``sha256`` (the dict earlier
    versions attached), so ``model.niff_checkpoint["test_acc"]`` reads as it always did.

    Attributes:
        model: how the model is built (:class:`~niff_analysis.models.ModelConfig`); its
            :attr:`architecture`, :attr:`model_kwargs`, :attr:`input_size` (always (H, W)),
            :attr:`in_chans`, :attr:`stem`, :attr:`mlp` and :attr:`mode` are shortcuts here.
        dataset: the dataset it was trained on (``None``: not recorded).
        seed: the training run's seed.
        epochs: epochs trained (0: an initialisation).
        recipe: the training recipe (:data:`RECIPE_FIELDS`).
        fmaps: layer name → the feature-map (H, W) each NIFF layer runs at, as recorded.
        test_acc, test_loss: the final test metrics.
        path: where it was read from (or how it was made).
        sha256: the hash of its weights file (``None``: not read from a file).
        record: the config as recorded, with any entry a loader adds (``step``,
            ``training_state``, …).
    """

    model: ModelConfig
    dataset: str | None = None
    seed: int | None = None
    epochs: int | None = None
    recipe: dict | None = None
    fmaps: dict = field(default_factory=dict)
    test_acc: float | None = None
    test_loss: float | None = None
    path: str | None = None
    sha256: str | None = None
    record: dict = field(default_factory=dict, repr=False)

    @classmethod
    def read(cls, path: PathLike) -> CheckpointConfig:
        """The validated config of a checkpoint folder or single-file checkpoint (:func:`read_config`)."""
        return cls.of(read_config(path), path=str(path))

    @classmethod
    def parse(cls, cfg: Any, source, path: str | None = None, sha256: str | None = None) -> CheckpointConfig:
        """A config dict (as ``config.json`` holds it), validated (:func:`validate_config`).

        Raises:
            CheckpointError: starting with ``source``, naming the field.
        """
        return cls.of(validate_config(cfg, source), path=path, sha256=sha256)

    @classmethod
    def of(cls, record: dict, path: str | None = None, sha256: str | None = None) -> CheckpointConfig:
        """The typed view of a record this toolkit made (not validated: :meth:`parse` a file's)."""
        record = dict(record)
        path = record.pop("path", path)
        sha256 = record.pop("sha256", sha256)
        seed, epochs = record.get("seed"), record.get("epochs")
        return cls(
            model=ModelConfig(record["architecture"], record.get("model_kwargs") or {}),
            dataset=record.get("dataset"),
            seed=None if seed is None else int(seed),
            epochs=None if epochs is None else int(epochs),
            recipe=record.get("recipe"),
            fmaps={
                d["name"]: _fmap(d.get("fmap"))
                for d in record.get("layers") or []
                if isinstance(d, dict) and "name" in d
            },
            test_acc=record.get("test_acc"),
            test_loss=record.get("test_loss"),
            path=None if path is None else str(path),
            sha256=sha256,
            record=record,
        )

    def replace(self, **changes) -> CheckpointConfig:
        """The same identity with some recorded fields (or ``path``, ``sha256``) changed."""
        return CheckpointConfig.of({**self.record, "path": self.path, "sha256": self.sha256, **changes})

    # ---- the model's, for short ---------------------------------------------------------
    @property
    def architecture(self) -> str:
        return self.model.architecture

    @property
    def model_kwargs(self) -> dict:
        return self.model.kwargs

    @property
    def input_size(self) -> Size:
        return self.model.input_size

    @property
    def in_chans(self) -> int | None:
        return self.model.in_chans

    @property
    def stem(self) -> str | None:
        return self.model.stem

    @property
    def mlp(self) -> dict | None:
        return self.model.mlp

    @property
    def mode(self) -> str | None:
        return self.model.mode

    @property
    def content_scale(self) -> float:
        """The scale its images' content was shown at in training (the recipe's; 1 when not recorded)."""
        return float((self.recipe or {}).get("content_scale", 1.0))

    @property
    def provenance(self) -> dict:
        """Where the checkpoint comes from: ``path``, ``sha256`` and the recorded
        :data:`PROVENANCE_FIELDS`."""
        return dict(
            path=self.path, sha256=self.sha256, **{k: self.record[k] for k in PROVENANCE_FIELDS if k in self.record}
        )

    # ---- the mapping earlier versions attached ------------------------------------------
    def _as_dict(self) -> dict:
        return {**self.record, "path": self.path, "sha256": self.sha256}

    def __getitem__(self, key: str) -> Any:
        return self._as_dict()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._as_dict())

    def __len__(self) -> int:
        return len(self._as_dict())


def layer_table(model: nn.Module) -> list[dict]:
    """Per NIFF layer (filters and pointwise): name, kind, channels and feature-map size."""
    return [
        dict(
            name=n,
            kind=m.kind,
            in_channels=m.in_channels,
            out_channels=m.out_channels,
            fmap=list(m.fmap) if m.fmap is not None else None,
        )
        for n, m in niff_layers(model, include_pointwise=True)
    ]


def model_config(model: nn.Module) -> dict:
    """The part of a checkpoint config that rebuilds ``model``."""
    cfg = ModelConfig.of(model)
    if cfg is None:
        raise CheckpointError(
            "the model records no way to rebuild it: build it with create_model(NAME) "
            "or, for any other CNN, build_model('torchvision:NAME' or "
            "'package.module:function', builder_kwargs, input_size=..., niff={...}) "
            "instead of calling to_niff() on a model yourself"
        )
    return dict(
        format=FORMAT,
        format_version=FORMAT_VERSION,
        architecture=cfg.architecture,
        model_kwargs=dict(cfg.kwargs),
        num_params=sum(p.numel() for p in model.parameters()),
        layers=layer_table(model),
    )


def save_checkpoint(model: nn.Module, path: PathLike, **metadata) -> Path:
    """Write ``model`` as a checkpoint directory (or a single ``.safetensors`` file).

    Extra keyword arguments (dataset, recipe, epochs, seed, test_acc, …) are stored in the
    config. Both files are written atomically; the weights first, so a config never points at
    missing weights.
    """
    path = Path(path)
    config = model_config(model)
    config.update(metadata)
    config["versions"] = dict(niff_analysis=__version__, torch=torch.__version__)
    # never write what cannot be read
    check_config_fields(json.loads(json.dumps(config, default=str)), "save_checkpoint")
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if path.suffix == ".safetensors":
        atomic_write(path, save(tensors, metadata={"niff_config": json.dumps(config)}))
        return path
    path.mkdir(parents=True, exist_ok=True)
    blob = save(tensors)
    # Two files cannot be replaced in one step: the config names its weights' hash, so a crash
    # between the two writes is detected on load instead of pairing new weights with an old config.
    config["weights_sha256"] = hashlib.sha256(blob).hexdigest()
    atomic_write(path / WEIGHTS_NAME, blob)
    atomic_write(path / CONFIG_NAME, json.dumps(config, indent=2) + "\n")
    return path


def read_safetensors(path: Path, tensors: bool = True) -> tuple[dict, dict]:
    """(tensors, metadata) of a safetensors file; with ``tensors=False`` only its header is
    decoded (the metadata of a single-file checkpoint), and the tensors are ``{}``."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()} if tensors else {}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({str(exc).splitlines()[0]})") from None
    return state, meta


def read_config(path: PathLike) -> dict:
    """The config of a checkpoint directory or single-file checkpoint, validated
    (:func:`validate_config`; :meth:`CheckpointConfig.read` gives it typed)."""
    path = Path(path)
    if path.is_dir():
        cfg_path = path / CONFIG_NAME
        if not cfg_path.is_file():
            raise CheckpointError(f"{path}: directory holds no {CONFIG_NAME} (not a checkpoint)")
        try:
            cfg = json.loads(cfg_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CheckpointError(f"{cfg_path}: corrupt JSON ({exc})") from None
    elif path.suffix == ".safetensors":
        _, meta = read_safetensors(path, tensors=False)  # the weights are read once, later
        if "niff_config" not in meta:
            raise CheckpointError(f"{path}: safetensors file carries no niff_config metadata")
        try:
            cfg = json.loads(meta["niff_config"])
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{path}: corrupt niff_config metadata ({exc})") from None
    else:
        raise CheckpointError(f"{path}: not a checkpoint directory or .safetensors file")
    return validate_config(cfg, path)


def validate_config(cfg: Any, source) -> dict:
    """Refuse a config that this version cannot read as a checkpoint's identity: not a
    niff-analysis config, no architecture or model arguments, an unknown field
    (:func:`check_config_fields`), or a field of the wrong type; the message names the field.

    Returns:
        ``cfg`` itself.

    Raises:
        CheckpointError: starting with ``source``.
    """
    if not isinstance(cfg, dict) or cfg.get("format") != FORMAT:
        raise CheckpointError(f"{source}: config is not a {FORMAT} config")
    if "architecture" not in cfg or not isinstance(cfg.get("model_kwargs"), dict):
        raise CheckpointError(f"{source}: config lacks architecture/model_kwargs")
    check_config_fields(cfg, source)
    _check_kwarg_types(cfg["model_kwargs"], source)
    _check_identity_types(cfg, source)
    return cfg


def check_config_fields(cfg: dict, source) -> None:
    """Refuse a config with a field this version does not know, at any depth, or of a newer
    format version; the message names the field.

    Raises:
        CheckpointError: an unknown field (e.g. ``model_kwargs.mlp.activaton``), or
            ``format_version`` missing, not an integer, or newer than :data:`FORMAT_VERSION`.
    """
    version = cfg.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise CheckpointError(f"{source}: config field format_version must be an integer, got {version!r}")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{source}: config format_version {version} is newer than this niff-analysis "
            f"({__version__}) reads ({FORMAT_VERSION}): upgrade niff-analysis"
        )

    def unknown(d, allowed, prefix: str) -> None:
        if not isinstance(d, dict):
            return
        extra = sorted(set(d) - set(allowed))
        if extra:
            raise CheckpointError(
                f"{source}: config field {prefix}{extra[0]} is unknown (a misspelled key?); "
                f"{prefix.rstrip('.') or 'the config'} takes {', '.join(sorted(allowed))}"
            )

    unknown(cfg, CONFIG_FIELDS, "")
    unknown(cfg.get("recipe"), RECIPE_FIELDS, "recipe.")
    unknown(cfg.get("versions"), VERSION_FIELDS, "versions.")
    for i, layer in enumerate(cfg.get("layers") or []):
        unknown(layer, LAYER_FIELDS, f"layers[{i}].")
    kwargs = cfg.get("model_kwargs")
    if not isinstance(kwargs, dict):
        return
    from .layers.mlp import MLP_FIELDS
    from .models.build import NIFF_SETTINGS, is_builder

    if is_builder(str(cfg.get("architecture", ""))):
        unknown(kwargs, ("builder_kwargs", "input_size", "in_chans", "niff"), "model_kwargs.")
        niff = kwargs.get("niff")
        unknown(niff, NIFF_SETTINGS, "model_kwargs.niff.")
        if isinstance(niff, dict):
            unknown(niff.get("mlp"), MLP_FIELDS, "model_kwargs.niff.mlp.")
    else:
        unknown(kwargs, set(inspect.signature(create_model).parameters) - {"name"}, "model_kwargs.")
        unknown(kwargs.get("mlp"), MLP_FIELDS, "model_kwargs.mlp.")


def _check_kwarg_types(kwargs: dict, path) -> None:
    """Name the field of a hand-edited config whose type is wrong (not a confusing later error)."""

    def is_int(v):
        return isinstance(v, int) and not isinstance(v, bool)

    for key in ("num_classes", "in_chans"):
        if key in kwargs and kwargs[key] is not None and not is_int(kwargs[key]):
            raise CheckpointError(f"{path}: config field model_kwargs.{key} must be an integer, got {kwargs[key]!r}")
    size = kwargs.get("input_size")
    if size is not None and not (
        is_int(size) or (isinstance(size, list) and len(size) == 2 and all(is_int(v) for v in size))
    ):
        raise CheckpointError(
            f"{path}: config field model_kwargs.input_size must be an integer or [H, W], got {size!r}"
        )


def _check_identity_types(cfg: dict, source) -> None:
    """Name the identity field of a hand-edited config whose type is wrong."""
    for key, types, what in (
        ("architecture", str, "a string"),
        ("dataset", str, "a string"),
        ("seed", int, "an integer"),
        ("epochs", int, "an integer"),
        ("recipe", dict, "an object"),
        ("test_acc", (int, float), "a number"),
        ("test_loss", (int, float), "a number"),
        ("layers", list, "a list"),
    ):
        value = cfg.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, types)):
            raise CheckpointError(f"{source}: config field {key} must be {what}, got {value!r}")


def _check_finite(state: dict, path) -> None:
    bad = non_finite_tensors(state)
    if bad:
        raise NonFiniteWeightsError(f"{path}: weights contain NaN/Inf in {len(bad)} tensor(s), e.g. {bad[0]}")


def non_finite_tensors(state: dict) -> list[str]:
    """Names of the floating-point tensors of a state dict that hold NaN or Inf."""
    return [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]


def load_state_into(model: nn.Module, state: dict, source, allow_non_finite: bool = False) -> None:
    """Load a state dict strictly, turning key/shape mismatches into a one-line error."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or extra or wrong:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", extra)):
            if keys:
                parts.append(f"{len(keys)} {label} key(s) (e.g. {keys[0]})")
        if wrong:
            k = wrong[0]
            parts.append(
                f"{len(wrong)} wrong-shaped key(s) (e.g. {k}: checkpoint "
                f"{tuple(state[k].shape)}, model {tuple(own[k].shape)})"
            )
        raise CheckpointError(f"{source}: state dict does not match the model: {'; '.join(parts)}")
    if not allow_non_finite:
        _check_finite(state, source)
    model.load_state_dict(state)


def load_checkpoint(
    path: PathLike | None = None, device: str = "cpu", factory: str | None = None, allow_non_finite: bool = False
) -> nn.Module:
    """Rebuild the exact model of a checkpoint with no other information.

    Args:
        path: checkpoint directory or ``.safetensors`` file (also the ``model.safetensors``
            inside a checkpoint directory, and a trainer's ``train_state.pt``: its model weights
            and recipe), or the name of a bundled checkpoint (:func:`bundled_checkpoints`);
            ``None`` is the bundled default.
        device: ``"cpu"``, ``"cuda"``, ``"mps"`` or ``"auto"``.
        factory: the user factory (``package.module:function``) you agree to run, for a
            checkpoint of a model built by one (:func:`~niff_analysis.models.build_model`);
            nothing a checkpoint names runs otherwise.
        allow_non_finite: load weights holding NaN/Inf too (to describe a diverged run);
            the analyses refuse them.

    Returns:
        The model in eval mode; ``model.niff_checkpoint`` is its :class:`CheckpointConfig` (the
        config plus ``path`` and ``sha256`` of the weights).

    Raises:
        CheckpointError: missing, corrupt, foreign, inconsistent or non-finite checkpoints.
    """
    return Checkpoint.open(path, factory=factory).model(device, allow_non_finite=allow_non_finite)


class Checkpoint:
    """A checkpoint on disk with its identity, read and validated once (:meth:`open`): the model
    it holds (:meth:`model`), the model its training started from (:meth:`initial`) and test
    images as that model saw them (:meth:`images`).

    Attributes:
        path: the checkpoint: a folder, a single ``.safetensors`` file or a trainer's
            ``train_state.pt`` (the weights file inside a folder stands for the folder).
        config: its :class:`CheckpointConfig` (for a training state: what its recipe records;
            the model's own, :meth:`model`, adds its layers).
        factory: the user factory you allow to build its model.
    """

    def __init__(
        self, path: Path, config: CheckpointConfig, factory: str | None = None, training_state: dict | None = None
    ):
        self.path, self.config, self.factory = Path(path), config, factory
        self._state = training_state  # a train_state.pt's contents, read once by open()

    def __repr__(self) -> str:
        return f"Checkpoint({str(self.path)!r}, architecture={self.config.architecture!r})"

    @property
    def is_training_state(self) -> bool:
        """A trainer's ``train_state.pt`` (a run's last saved state), not a checkpoint."""
        return self._state is not None

    @classmethod
    def open(cls, path: PathLike | None = None, factory: str | None = None) -> Checkpoint:
        """Find a checkpoint and read its config (its weights are read by :meth:`model`).

        Args:
            path: as :func:`load_checkpoint` takes it (``None``: the bundled default).
            factory: the user factory you allow to build its model.

        Raises:
            CheckpointError: missing, unreadable, foreign or unfinished (a run without its final
                checkpoint), a config this version cannot read, or no weights.
        """
        path = resolve_checkpoint(path) if path is not None else DEFAULT_CHECKPOINT
        check_readable_path(path)
        if path.is_file() and path.name == WEIGHTS_NAME and (path.parent / CONFIG_NAME).is_file():
            path = path.parent  # the weights file of a checkpoint folder stands for the folder
        if path.is_file() and path.name == TRAIN_STATE_NAME:
            return cls._open_training_state(path, factory)
        if path.is_dir() and unfinished_reason(path):
            raise CheckpointError(unfinished_reason(path))
        if path.is_file() and path.name.endswith(PICKLE_SUFFIXES):
            raise CheckpointError(
                f"{path}: a PyTorch .pt/.pth file carries no niff-analysis config; import "
                "it with `niff-analyze import PATH --model NAME --out DIR` "
                "(niff_analysis.imports.import_state_dict)"
            )
        config = CheckpointConfig.read(path)
        weights = path / WEIGHTS_NAME if path.is_dir() else path
        if not weights.is_file():
            raise CheckpointError(f"{path}: {WEIGHTS_NAME} is missing")
        return cls(path, config.replace(sha256=file_sha256(weights)), factory)

    @classmethod
    def _open_training_state(cls, path: Path, factory: str | None) -> Checkpoint:
        """A trainer's ``train_state.pt`` (weights and recipe; weights_only)."""
        try:
            with warnings.catch_warnings():  # torch warns about pickle protocols on stderr
                warnings.simplefilter("ignore")
                st = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - corrupt or foreign file, one line
            raise CheckpointError(f"{path}: cannot read the training state ({torch_load_reason(exc)})") from None
        recipe = st.get("recipe") if isinstance(st, dict) else None
        if not isinstance(recipe, dict) or "model" not in recipe or not isinstance(st.get("model"), dict):
            raise CheckpointError(f"{path}: not a niff-analysis training state with a recorded recipe")
        config = CheckpointConfig.of(
            dict(
                format=FORMAT,
                format_version=FORMAT_VERSION,
                architecture=recipe["model"],
                model_kwargs=recipe.get("model_kwargs") or {},
                **cls._training_state_meta(st),
            ),
            path=str(path),
            sha256=file_sha256(path),
        )
        return cls(path, config, factory, training_state=st)

    @staticmethod
    def _training_state_meta(st: dict) -> dict:
        recipe = st["recipe"]
        return dict(
            dataset=recipe.get("dataset"),
            seed=recipe.get("seed"),
            epochs=int(st.get("epoch", 0)),
            step=int(st.get("step", 0)),
            training_state=True,
        )

    def model(self, device: str = "cpu", allow_non_finite: bool = False) -> nn.Module:
        """The model, rebuilt and its weights loaded (:func:`load_checkpoint`).

        Args:
            device: ``"cpu"``, ``"cuda"``, ``"mps"`` or ``"auto"``.
            allow_non_finite: load weights holding NaN/Inf too.

        Returns:
            The model in eval mode; ``model.niff_checkpoint`` is its :class:`CheckpointConfig`.

        Raises:
            CheckpointError: corrupt weights, weights that do not fit the model, a layer that
                runs at another size than recorded, a hash that does not match, non-finite
                weights, or a model that cannot be rebuilt.
        """
        path, cfg = self.path, self.config
        if self._state is not None:
            model = rebuild_model(path, cfg.architecture, cfg.model_kwargs, self.factory)
            load_state_into(model, self._state["model"], path, allow_non_finite)
            meta = dict(model_config(model), **self._training_state_meta(self._state))
            labelled = CheckpointConfig.of(meta, path=cfg.path, sha256=cfg.sha256)
            model.niff_checkpoint = labelled  # type: ignore[assignment]  # nn.Module.__setattr__ is typed for tensors and modules only
            model.eval()
            return model.to(resolve_device(device))
        state, _ = read_safetensors(path / WEIGHTS_NAME if path.is_dir() else path)
        model = rebuild_model(path, cfg.architecture, cfg.model_kwargs, self.factory)
        load_state_into(model, state, path, allow_non_finite)
        recorded = {d["name"]: d.get("fmap") for d in cfg.record.get("layers", [])}
        for d in layer_table(model):
            if d["name"] in recorded and recorded[d["name"]] != d["fmap"]:
                raise CheckpointError(
                    f"{path}: layer {d['name']} runs at {d['fmap']} but the checkpoint records {recorded[d['name']]}"
                )
        if cfg.record.get("weights_sha256") not in (None, cfg.sha256):
            raise CheckpointError(
                f"{path}: {WEIGHTS_NAME} does not match the hash its config records "
                "(an interrupted save, or files from two checkpoints)"
            )
        model.niff_checkpoint = cfg  # type: ignore[assignment]  # nn.Module.__setattr__ is typed for tensors and modules only
        model.eval()
        return model.to(resolve_device(device))

    def initial(self, device: str = "cpu") -> nn.Module | None:
        """The untrained model this checkpoint's training run started from, or ``None`` if unknown.

        The run folder's ``init/`` checkpoint when there is one (also for ``epoch_NNN/``
        checkpoints inside a run folder, and for the training state of a run that has its
        final checkpoint); otherwise the model rebuilt from the architecture, keyword
        arguments and seed that a checkpoint of the trainer records (the trainer builds its
        model the same way, :func:`initial_model`). ``None`` for an initialisation itself, for
        checkpoints that record no training run (imported, or saved by hand) and for the
        training state of a run without its final checkpoint yet.

        Raises:
            CheckpointError: the run's ``init/`` checkpoint cannot be loaded.
        """
        if self.is_training_state:
            beside = self.path.parent
            return Checkpoint.open(beside).initial(device) if (beside / CONFIG_NAME).is_file() else None
        cfg = self.config
        if not cfg.epochs:
            return None
        folder = self.path if self.path.is_dir() else self.path.parent
        for run in (folder, folder.parent):
            init = run / INIT_DIR
            if (init / CONFIG_NAME).is_file() and init.resolve() != folder.resolve():
                return load_checkpoint(init, device=device)
        if cfg.seed is None or "recipe" not in cfg.record:
            return None
        model = initial_model(cfg.architecture, cfg.model_kwargs, cfg.seed)
        rebuilt = cfg.replace(
            path=f"{self.path} (initialisation rebuilt from seed {cfg.seed})",
            sha256=None,
            epochs=0,
            test_acc=None,
            test_loss=None,
        )
        model.niff_checkpoint = rebuilt  # type: ignore[assignment]  # nn.Module.__setattr__ is typed for tensors and modules only
        return model.eval().to(resolve_device(device))

    def images(self, n: int, data_dir: PathLike | None = None, dataset: str | None = None) -> torch.Tensor:
        """The first ``n`` test images of the dataset the model was trained on (or ``dataset``),
        normalised as the trainer fed them, their content at the scale it was trained on (the
        recipe's ``content_scale``; 1 for another dataset), at the size the model runs at
        (:func:`~niff_analysis.data.dataset_images`): what its receptive fields are measured on.

        Args:
            n: how many.
            data_dir: the dataset's folder (Fashion-MNIST: the Debian package's by default).
            dataset: another dataset than the recorded one.

        Raises:
            DataError: no dataset recorded (and none given), or it is not available.
            SelectionError: the test set has fewer than ``n`` images.
        """
        from .data import dataset_images

        name = dataset or self.config.dataset
        if name is None:
            raise DataError("the checkpoint records no dataset")
        scale = self.config.content_scale if name == self.config.dataset else 1.0  # as the run saw them
        return dataset_images(name, n, data_dir, image_size=self.config.input_size[0], content_scale=scale)


def rebuild_model(source, architecture: str, model_kwargs: dict, factory: str | None) -> nn.Module:
    """The untrained model a checkpoint's config describes (registry, torchvision or the allowed
    user factory); any failure is a :class:`CheckpointError` naming ``source``."""
    from .models.build import BuilderError, rebuild
    from .models.registry import UnknownModelError

    try:
        return rebuild(architecture, model_kwargs, factory=factory)
    except (UnknownModelError, BuilderError) as exc:
        raise CheckpointError(f"{source}: {exc}") from None
    except (TypeError, ValueError, NiffError) as exc:
        raise CheckpointError(f"{source}: cannot rebuild {architecture!r}: {exc}") from None


def initial_model(architecture: str, model_kwargs: dict, seed: int) -> nn.Module:
    """The model a training run with this seed starts from (what its ``init/`` checkpoint holds).

    The global RNG is seeded for the build and restored afterwards, so the caller's state is
    untouched and the result depends only on the arguments.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return create_model(architecture, **model_kwargs)


def available_memory() -> int | None:
    """Bytes of memory this process can still use (MemAvailable, and the cgroup's limit where
    one is set), or ``None`` where neither can be read."""
    found = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text())
        if limit.isdigit():
            found.append(int(limit) - used)
    except (OSError, ValueError):
        pass
    return min(found) if found else None


def check_model_fits(architecture: str, model_kwargs: dict, copies: int = 1, dtype: torch.dtype = torch.float32) -> int:
    """Refuse a registered model whose parameters alone cannot fit in memory, before building it.

    The model is built on PyTorch's ``meta`` device (shapes only, no memory, no random numbers
    drawn), so ``--mlp 20000,20000`` is refused in a second instead of failing in the allocator.

    Args:
        copies: tensors of the parameters' size needed at once (training: weights, gradients,
            momentum = 3).

    Returns:
        The number of parameters.

    Raises:
        NiffError: more bytes than :func:`available_memory`.
    """
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        model = create_model(architecture, **model_kwargs)
    n = sum(p.numel() for p in model.parameters())
    need = n * copies * torch.empty((), dtype=dtype).element_size()
    free = available_memory()
    if free is not None and need > free:
        raise NiffError(
            f"{architecture} with these settings has {n / 1e9:.3g} G parameters: {need / 1e9:.3g} GB "
            f"({copies} cop{'y' if copies == 1 else 'ies'} in {str(dtype).replace('torch.', '')}), "
            f"more than the {free / 1e9:.3g} GB of memory available here; choose smaller --mlp "
            "sizes (or --width)"
        )
    return n


def load_initial(path: PathLike | None = None, device: str = "cpu") -> nn.Module | None:
    """The untrained model a trained checkpoint's run started from, or ``None`` if unknown
    (:meth:`Checkpoint.initial`)."""
    return Checkpoint.open(path).initial(device)
