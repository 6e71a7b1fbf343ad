"""The one line an interrupted run prints, shared by `train` and a study's jobs: which signal,
what was kept, how to go on."""

from __future__ import annotations

import signal

from niff_analysis.train.trainer import Interrupted, interrupted_message

GO_ON = "the same command with --resume continues it"


def test_a_state_saved_at_the_stop_is_named_with_its_position(tmp_path):
    state = tmp_path / "train_state.pt"
    msg = interrupted_message(Interrupted(signal.SIGTERM, saved=(2, 40)), state, GO_ON)
    assert msg == f"interrupted by SIGTERM: the state at step 40 of epoch 3 is saved in {state}; {GO_ON}"


def test_a_stop_without_a_new_save_names_the_last_state_on_disk(tmp_path):
    state = tmp_path / "train_state.pt"
    state.write_bytes(b"")
    assert interrupted_message(KeyboardInterrupt(), state, GO_ON) == (
        f"interrupted by SIGINT: its last saved state is {state}; {GO_ON}"
    )


def test_nothing_saved_yet_says_how_to_start_again(tmp_path):
    state = tmp_path / "train_state.pt"
    exc = Interrupted(signal.SIGINT)
    assert interrupted_message(exc, state, GO_ON, start_again="start it again") == (
        "interrupted by SIGINT before the first saved state: start it again"
    )
    assert interrupted_message(exc, state, "the same sweep command resumes it").endswith(
        ": the same sweep command resumes it"
    )
