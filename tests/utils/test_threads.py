"""The adaptive thread policy: fewer threads while other processes occupy the cores."""

import pytest
import torch

from sparseconv.utils import threads


@pytest.fixture
def two_cores(monkeypatch):
    monkeypatch.setattr(threads, "_cores", lambda: 2)
    monkeypatch.setattr(threads, "_own_running", lambda: 1)
    saved = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(saved)
    threads.set_policy("adaptive")


@pytest.mark.parametrize("running,expected", [(1, 2), (2, 1), (5, 1), (None, 2)])
def test_available_threads_follow_the_runnable_tasks(two_cores, monkeypatch, running, expected):
    monkeypatch.setattr(threads, "_runnable", lambda: running)
    threads.set_policy("adaptive")  # forget the cached reading
    assert threads.available_threads() == expected


def test_fixed_policy_and_the_context_restores_torchs_setting(two_cores, monkeypatch):
    monkeypatch.setattr(threads, "_runnable", lambda: 2)
    threads.set_policy("adaptive")
    with threads.adaptive_threads():
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2
    threads.set_policy("fixed")
    assert threads.available_threads() == 2
    with pytest.raises(ValueError, match="thread policy must be one of"):
        threads.set_policy("greedy")


def test_the_reading_is_real_on_this_machine():
    assert threads._runnable() is None or threads._runnable() >= 1
    assert 1 <= threads.available_threads() <= torch.get_num_threads()
