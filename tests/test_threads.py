"""Thread policy: intra-op threads follow the cores *other* processes keep busy now."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from zhtune import device


def _fake_loadavg(tmp_path, monkeypatch, running: int, own: int, cores: int) -> None:
    f = tmp_path / "loadavg"
    f.write_text(f"1.90 1.50 1.00 {running}/321 4242\n")
    monkeypatch.setattr(device, "LOADAVG", f)
    monkeypatch.setattr(device, "_own_running_threads", lambda: own)
    monkeypatch.setattr(device.os, "sched_getaffinity", lambda _pid: set(range(cores)))
    monkeypatch.delenv("ZHTUNE_THREADS", raising=False)


def test_own_threads_are_not_other_load(tmp_path, monkeypatch):
    # 2 runnable tasks, both ours (a stage that just trained on every core): all cores free,
    # although the 1-minute load average (1.90) would say one core is busy
    _fake_loadavg(tmp_path, monkeypatch, running=2, own=2, cores=2)
    assert device.busy_elsewhere(interval=0) == 0
    assert device.cpu_threads() == 2


def test_other_processes_take_cores(tmp_path, monkeypatch):
    _fake_loadavg(tmp_path, monkeypatch, running=4, own=1, cores=4)
    assert device.busy_elsewhere(interval=0) == 3
    assert device.cpu_threads() == 1
    _fake_loadavg(tmp_path, monkeypatch, running=9, own=1, cores=2)
    assert device.cpu_threads() == 1  # never below one
    monkeypatch.setenv("ZHTUNE_THREADS", "3")
    assert device.cpu_threads() == 3  # the override wins


def test_unreadable_loadavg_means_no_other_load(tmp_path, monkeypatch):
    _fake_loadavg(tmp_path, monkeypatch, running=2, own=1, cores=2)
    device.LOADAVG.write_text("garbage\n")
    assert device.busy_elsewhere(interval=0) == 0


@pytest.mark.skipif(not device.LOADAVG.is_file(), reason="needs Linux /proc/loadavg")
def test_a_busy_process_is_seen():
    child = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        assert device.busy_elsewhere() >= 1
    finally:
        child.kill()
        child.wait()
