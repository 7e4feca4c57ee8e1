"""Start a real ComfyUI with this pack installed, for the demo, `make serve` and the tests.

By default it uses the ComfyUI that `tools/setup_env.sh` installs (.comfyui/ComfyUI, run by
.venv/bin/python). To test against the ComfyUI you actually run, set
``TTM_COMFYUI_DIR`` (the folder holding main.py) and ``TTM_COMFYUI_PYTHON`` (its Python).

Every server gets its own base directory (models, input, output, user, custom_nodes) so
runs never touch each other or a user's ComfyUI folders; the pack is linked into its
custom_nodes and the example inputs (images, clip, saved trajectory) are copied into its input folder.

A server serves ComfyUI's own frontend (the comfyui-frontend-package installed beside it; 1.32.9
for the project's ComfyUI 0.3.75) unless given a frontend folder (``--front-end-root``);
``frontends()`` names the ones the tests run on, ``frontend_root()`` finds a version's folder.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
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
# `make setup` unpacks the newest frontend (requirements-frontend-new.txt) into FRONTENDS_DIR/<version>.
FRONTENDS_DIR = ROOT / ".comfyui" / "frontends"


def pinned_frontend(requirements: Path) -> str:
    """The comfyui-frontend-package version a requirements file pins (``==X.Y.Z``)."""
    for line in requirements.read_text().splitlines():
        match = re.match(r"\s*comfyui-frontend-package==([0-9][0-9.]*)", line)
        if match:
            return match.group(1)
    raise RuntimeError(f"{requirements} pins no comfyui-frontend-package==X.Y.Z")


NEWEST_FRONTEND = pinned_frontend(ROOT / "requirements-frontend-new.txt")


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


@functools.cache
def _installed_frontend(python: str) -> str:
    probe = "import importlib.metadata as m; print(m.version('comfyui-frontend-package'))"
    return subprocess.run([python, "-c", probe], capture_output=True, text=True, check=True,
                          timeout=60).stdout.strip()


def own_frontend() -> str:
    """The version of the frontend ComfyUI serves by itself (no ``--front-end-root``).

    Read from ComfyUI's Python; where that does not run yet (no `make setup`), the version
    requirements-comfyui.txt pins, which `make setup` installs.
    """
    try:
        return _installed_frontend(ComfyInstall.locate().python)
    except (RuntimeError, OSError, subprocess.SubprocessError):
        return pinned_frontend(ROOT / "requirements-comfyui.txt")


def frontends() -> dict[str, Path | None]:
    """The frontends the tests run ComfyUI with, by version, ComfyUI's own first.

    ComfyUI's own maps to None (served without ``--front-end-root``); the newest one (pinned in
    requirements-frontend-new.txt) maps to its folder under FRONTENDS_DIR, which may not exist
    yet: ``frontend_root`` then says to run `make setup`.
    """
    found: dict[str, Path | None] = {own_frontend(): None}
    found.setdefault(NEWEST_FRONTEND, FRONTENDS_DIR / NEWEST_FRONTEND)
    return found


def frontend_root(version: str) -> Path | None:
    """``--front-end-root`` for a version ``frontends()`` names (None: ComfyUI's own frontend)."""
    known = frontends()
    if version not in known:
        raise RuntimeError(f"no ComfyUI frontend {version}: known are {', '.join(known)}")
    root = known[version]
    if root is not None:
        check_frontend_root(root)
    return root


def check_frontend_root(root: Path) -> None:
    if not (root / "index.html").is_file():
        raise RuntimeError(f"no ComfyUI frontend at {root} (index.html missing): run `make setup`, which unpacks "
                           "the version requirements-frontend-new.txt pins there")


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
    for example in (ROOT / "examples").iterdir():
        if example.suffix in (".png", ".mp4", ".npz"):  # images, the reference clip, the saved trajectory
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
    # a frontend's static folder (the one with index.html) served instead of ComfyUI's own
    frontend_root: Path | None = None
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
                "--database-url", f"sqlite:///{self.base / 'user' / 'comfyui.db'}",
                *(("--front-end-root", str(self.frontend_root)) if self.frontend_root else ()), *self.extra_args]

    def start(self, timeout: float = 120.0) -> ComfyServer:
        if self.frontend_root is not None:
            check_frontend_root(self.frontend_root)
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


def serve(port: int, base: Path, frontend: str | None = None) -> int:
    """`make serve`: run ComfyUI with the pack in the foreground until SIGTERM/SIGINT."""
    install = ComfyInstall.locate()
    server = ComfyServer(base, port, install=install, frontend_root=frontend_root(frontend) if frontend else None)
    prepare_base_directory(server.base)
    LOG.info("ComfyUI with Through-The-Mask on %s (base directory %s, frontend %s); stop with Ctrl-C or SIGTERM",
             server.url, server.base, frontend or "ComfyUI's own")
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
    parser.add_argument("--frontend", default=None,
                        help=f"frontend version to serve (default: ComfyUI's own; {NEWEST_FRONTEND}: the newest one)")
    options = parser.parse_args()
    sys.exit(serve(options.port, options.base, options.frontend))
