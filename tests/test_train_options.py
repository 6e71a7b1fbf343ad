"""The options of ``train`` and ``sweep``: TrainConfig is the one source of their defaults."""

from __future__ import annotations

import dataclasses
import re

import click
from click.testing import CliRunner

from niff_analysis.cli import main
from niff_analysis.cli.train import train_config, train_options
from niff_analysis.layers import CONV_MODES
from niff_analysis.train import TrainConfig


def _config(*args: str) -> TrainConfig:
    """The TrainConfig the shared options make of ``args`` (nothing is trained)."""
    made = []

    @click.command()
    @train_options
    @click.option("--out", required=True)
    def cmd(out, **opts):
        made.append(train_config(out, **opts))

    res = CliRunner().invoke(cmd, ["--model", "resnet18_niff", "--out", "o", *args], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return made[0]


def test_options_not_given_are_trainconfigs_defaults():
    assert _config() == TrainConfig(model="resnet18_niff", out="o", model_kwargs={"mode": "circular"})


def test_given_options_reach_the_config_falsy_ones_too():
    cfg = _config(
        "--epochs",
        "0",
        "--lr",
        "0.5",
        "--no-amp",
        "--quiet",
        "--compile",
        "--no-sync-bn",
        "--save-every-steps",
        "0",
        "--seed",
        "3",
        "--mode",
        "linear",
        "--stem",
        "cifar",
    )
    assert (cfg.epochs, cfg.lr, cfg.amp, cfg.progress, cfg.compile, cfg.sync_bn, cfg.seed) == (
        0,
        0.5,
        False,
        False,
        True,
        False,
        3,
    )
    assert cfg.model_kwargs == {"stem": "cifar", "mode": "linear"}


def test_help_shows_trainconfigs_defaults():
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    for command in ("train", "sweep"):
        text = " ".join(CliRunner().invoke(main, [command, "--help"]).output.split())
        for option, name in (
            ("--epochs", "epochs"),
            ("--batch-size", "batch_size"),
            ("--lr", "lr"),
            ("--weight-decay", "weight_decay"),
            ("--workers", "workers"),
        ):
            shown = re.search(rf"{option} (INTEGER|FLOAT) [^\[]*\[default: ([^\]]*)\]", text)
            assert shown and shown[2] == str(defaults[name]), option
        assert "Autocast on CUDA. [default: amp]" in text
        assert f"--mode [{'|'.join(CONV_MODES)}] [default: circular]" in text
        assert "--device [auto|cpu|cuda|mps] Where to run. [default: auto]" in text
