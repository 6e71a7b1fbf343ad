"""``python -m benchmarks train_loop`` (issue 30): its worker processes take turns, each setting
gets its own allocator, and the old tree is really the old code."""

from __future__ import annotations

import pytest
import torch

from benchmarks import train_loop

pytestmark = pytest.mark.slow  # five worker processes with two models each


def test_every_setting_and_precision_is_timed_and_main_is_the_old_tree(capsys):
    frame = train_loop.run(quick=True, rounds=2, batch=2, width=8)
    precisions = ["fp32", "bf16"] if train_loop.cpu_bf16_flags() else ["fp32"]
    settings = [(c, s) for c, s, _ in train_loop.SETTINGS]
    assert [(r.code, r.setting) for r in frame.itertuples()] == [x for x in settings for _ in precisions]
    for col in ("resnet18_ms", "niff_ms", "resnet18_cpu_ms", "niff_cpu_ms"):
        assert (frame[col] > 0).all(), col
    # A worker runs torch.get_num_threads() threads (OMP_NUM_THREADS), so its CPU time cannot exceed
    # that many times its wall time by more than timer resolution (CI: 2 threads, CPU ~2x wall).
    threads = torch.get_num_threads()
    assert (frame["niff_cpu_ms"] <= frame["niff_ms"] * threads * 1.05 + 5).all()
    out = capsys.readouterr().out
    assert out.count("main's plain loop / this plain loop (speed-up)") == 2  # wall and CPU time
    assert "not measured" not in out
    assert "AMD" in out or "Intel" in out or "native bf16" in out


def test_no_git_history_leaves_mains_rows_out(tmp_path, monkeypatch):
    (tmp_path / "copy").mkdir()
    monkeypatch.setattr(train_loop, "ROOT", tmp_path / "copy")  # a copied tree: no .git
    assert train_loop.reference_tree(tmp_path) is None


def test_the_reference_tree_is_the_code_before_issue_30(tmp_path):
    tree = train_loop.reference_tree(tmp_path)
    niff = (tree / "niff_analysis" / "layers" / "niff.py").read_text()
    assert "_HermitianFilter" not in niff and "class DepthwiseNIFF" in niff
    assert not (tree / "niff_analysis" / "layers" / "memory.py").exists()
    assert not (tree / "niff_analysis" / "checkpoints").exists()
