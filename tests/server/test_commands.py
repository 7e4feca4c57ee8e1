"""The README's commands: `make demo` prints the mp4 it wrote; `make serve` serves and stops on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import av
import pytest

from common import ROOT
from tools.comfy_harness import free_port

pytestmark = pytest.mark.server


def test_demo_prints_the_mp4_it_wrote(tmp_path: Path) -> None:
    # tools/demo.py is what `make demo` runs once the environment exists.
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "demo.py"), "--base", str(tmp_path / "demo")],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    last = result.stdout.strip().splitlines()[-1]
    video = Path(last)
    assert video.is_absolute() and video.suffix == ".mp4" and video.is_file()
    assert video.is_relative_to(tmp_path / "demo" / "output")
    with av.open(str(video)) as container:
        assert sum(1 for _ in container.decode(video=0)) == 49


def test_make_serve_answers_and_stops_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    env = dict(os.environ, TTM_SERVE_BASE=str(tmp_path / "serve"))
    process = subprocess.Popen(["make", "--no-print-directory", "serve", f"PORT={port}"], cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            assert process.poll() is None, process.stdout.read().decode(errors="replace")[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/object_info/TTM_VideoCombine", timeout=5) as r:
                    assert b"TTM_VideoCombine" in r.read()
                    break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("make serve did not answer")
        process.send_signal(signal.SIGTERM)  # to make itself, as a service manager would
        assert process.wait(timeout=60) is not None
        with pytest.raises(OSError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/object_info", timeout=5)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
