"""Start a real ComfyUI with this pack installed, for the demo, `make serve` and the tests.

By default it uses the ComfyUI that `tools/setup_env.sh` installs (.comfyui/ComfyUI, run by
.venv/bin/python). To test against the ComfyUI you actually run, set
``TTM_COMFYUI_DIR`` (the folder holding main.py) and ``TTM_COMFYUI_PYTHON`` (its Python).

Every server gets its own base directory (models, input, output, user, custom_nodes) so
runs never touch each other or a user's ComfyUI folders; the pack is linked into its
custom_nodes and the example inputs are copied into its input folder.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

LOG = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[1]
PACK_NAME = "ComfyUI-Through-The-Mask"


@dataclass(frozen=True)
class ComfyInstall:
    """Where ComfyUI's main.py is and which Python runs it."""

    comfy_dir: Path
    python: str

    @classmethod
    def locate(cls) -> ComfyInstall:
        comfy_dir = Path(os.environ.get("TTM_COMFYUI_DIR") or ROOT / ".comfyui" / "ComfyUI")
        python = os.environ.get("TTM_COMFYUI_PYTHON") or str(ROOT / ".venv" / "bin" / "python")
        if not (comfy_dir / "main.py").is_file():
            raise RuntimeError(f"no ComfyUI at {comfy_dir} (main.py missing): run `make setup`, or set "
                               "TTM_COMFYUI_DIR to your ComfyUI folder")
        if not Path(python).exists() and shutil.which(python) is None:
            raise RuntimeError(f"the Python {python} does not exist: set TTM_COMFYUI_PYTHON")
        return cls(comfy_dir, python)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def prepare_base_directory(base: Path) -> Path:
    """Lay out a ComfyUI base directory with the pack linked in and the examples in input/."""
    for sub in ("custom_nodes", "input", "output", "temp", "models", "user/default"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    link = base / "custom_nodes" / PACK_NAME
    if not link.exists():
        link.symlink_to(ROOT, target_is_directory=True)
    for example in (ROOT / "examples").glob("*.png"):
        shutil.copy2(example, base / "input" / example.name)
    settings = base / "user" / "default" / "comfy.settings.json"
    if not settings.exists():
        # Skip the first-visit templates dialog in the browser.
        settings.write_text(json.dumps({"Comfy.TutorialCompleted": True}))
    return base


@dataclass
class ComfyServer:
    """A ComfyUI process on 127.0.0.1; use as a context manager or call start()/stop()."""

    base: Path
    port: int = 0
    extra_args: tuple[str, ...] = ()
    install: ComfyInstall = field(default_factory=ComfyInstall.locate)
    process: subprocess.Popen | None = None

    def __post_init__(self) -> None:
        # ComfyUI runs in its own folder (cwd = comfy_dir): a relative base would be read from there.
        self.base = Path(self.base).resolve()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.base / "comfyui.log"

    def command(self) -> list[str]:
        return [self.install.python, str(self.install.comfy_dir / "main.py"), "--cpu", "--listen", "127.0.0.1",
                "--port", str(self.port), "--disable-auto-launch", "--base-directory", str(self.base),
                "--database-url", f"sqlite:///{self.base / 'user' / 'comfyui.db'}", *self.extra_args]

    def start(self, timeout: float = 120.0) -> ComfyServer:
        prepare_base_directory(self.base)
        self.port = self.port or free_port()
        log = self.log_path.open("ab")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        LOG.info("starting ComfyUI on %s (log: %s)", self.url, self.log_path)
        self.process = subprocess.Popen(self.command(), cwd=self.install.comfy_dir, stdout=log,
                                        stderr=subprocess.STDOUT, env=env, start_new_session=True)
        log.close()
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with code {self.process.returncode} during start-up:\n"
                                   f"{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/object_info", timeout=5) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"ComfyUI did not answer within {timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 20.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def __enter__(self) -> ComfyServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve(port: int, base: Path) -> int:
    """`make serve`: run ComfyUI with the pack in the foreground until SIGTERM/SIGINT."""
    install = ComfyInstall.locate()
    server = ComfyServer(base, port, install=install)
    prepare_base_directory(server.base)
    LOG.info("ComfyUI with Through-The-Mask on %s (base directory %s); stop with Ctrl-C or SIGTERM",
             server.url, server.base)
    process = subprocess.Popen(server.command(), cwd=install.comfy_dir)

    def forward(signum: int, _frame: object) -> None:
        process.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    return process.wait()


if __name__ == "__main__":
    import argparse

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8188)
    parser.add_argument("--base", type=Path, default=ROOT / ".comfyui" / "serve")
    options = parser.parse_args()
    sys.exit(serve(options.port, options.base))
