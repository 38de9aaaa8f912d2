"""Ctrl-C during training is recorded and raised at a step boundary, so no finalizer can swallow it."""

from __future__ import annotations

import os
import signal

import pytest

from hf_vae.interrupts import interrupts_at_step_boundaries


def test_a_press_is_recorded_then_raised_when_the_block_ends():
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        with interrupts_at_step_boundaries() as requested:
            assert not requested()
            os.kill(os.getpid(), signal.SIGINT)
            assert requested()  # the handler ran and recorded it; nothing was raised mid-step
    assert signal.getsignal(signal.SIGINT) is before


def test_a_second_press_interrupts_at_once():
    steps_after_second_press = 0
    with pytest.raises(KeyboardInterrupt):
        with interrupts_at_step_boundaries():
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
            steps_after_second_press += 1
    assert steps_after_second_press == 0


def test_no_press_changes_nothing():
    before = signal.getsignal(signal.SIGINT)
    with interrupts_at_step_boundaries() as requested:
        assert not requested()
    assert signal.getsignal(signal.SIGINT) is before
