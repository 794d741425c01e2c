"""The engine's callback interface and console progress."""

from __future__ import annotations

import io

from nasfe.engine.callbacks import Callback, CallbackList, ConsoleProgress, TrainState


class Recorder(Callback):
    def __init__(self):
        self.calls = []

    def on_step(self, state, metrics):
        self.calls.append(("step", state.step, metrics["loss"]))

    def on_epoch_end(self, state, metrics, genotype=None):
        self.calls.append(("epoch", state.epoch, genotype))


def test_callback_list_fans_out_in_order():
    a, b = Recorder(), Recorder()
    cbs = CallbackList([a, None, b])
    st = TrainState(phase="search", step=4)
    cbs.on_step(st, {"loss": 0.5})
    cbs.on_epoch_end(st, {}, "g")
    cbs.on_checkpoint(st, None, {})  # not overridden: the base no-op
    assert a.calls == b.calls == [("step", 4, 0.5), ("epoch", 0, "g")]


def test_console_progress_prints_epoch_lines_with_eta():
    out = io.StringIO()
    cb = ConsoleProgress(stream=out, bar=False)
    st = TrainState(phase="retrain", epochs=4, steps_per_epoch=10)
    cb.on_start(st, {})
    st.step, st.epoch = 10, 2  # the loop counts the finished epoch before the hook
    cb.on_epoch_end(st, {"val_psnr": 21.5, "loss": 0.01, "note": "x"})
    line = out.getvalue()
    assert "[retrain] epoch 2/4 step 10/40" in line and "val_psnr=21.5" in line and "eta" in line
    assert "note" not in line


def test_console_progress_is_silent_off_rank_zero():
    out = io.StringIO()
    cb = ConsoleProgress(stream=out, bar=False)
    st = TrainState(phase="search", epochs=1, steps_per_epoch=1, rank=1, world_size=2)
    cb.on_start(st, {})
    cb.on_epoch_end(st, {"loss": 1.0})
    assert out.getvalue() == ""


def test_console_progress_can_write_through_a_logger():
    lines = []
    cb = ConsoleProgress(bar=False, write=lines.append)
    st = TrainState(phase="search", epochs=1, steps_per_epoch=2)
    cb.on_start(st, {})
    st.step, st.epoch = 2, 1
    cb.on_epoch_end(st, {"loss": 0.5})
    assert len(lines) == 1 and lines[0].startswith("[search] epoch 1/1 step 2/2")
