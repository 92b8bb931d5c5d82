"""Helpers of the real-browser tests: the system Chromium's settings, page logs, a voila server.

Playwright drives Debian's ``/usr/bin/chromium`` (it never downloads a browser). A missing
Chromium, playwright or voila skips these tests with how to install it, except in CI
(``CI=true``), where it fails them. Every page blocks the outside network: a request to a
host other than 127.0.0.1 is answered empty by the test and recorded, so a page cannot
depend on a CDN without the test seeing it.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
INSTALL = {
    "chromium": "install Debian's chromium: apt-get install -y chromium",
    "playwright": "install the dev extras: pip install -c constraints.txt -e '.[dev]' "
                  "(no 'playwright install': the tests use the system chromium)",
    "voila": "install the dev extras: pip install -c constraints.txt -e '.[dev]'",
}


def require(what: str, present: bool) -> None:
    """Skip (outside CI) or fail (CI=true) when ``what`` is missing."""
    if present:
        return
    message = f"{what} is missing: {INSTALL[what]}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI must run the browser tests; {message}", pytrace=False)
    pytest.skip(message)


@dataclass
class PageLog:
    """What a page said while the test drove it."""

    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    external: list[str] = field(default_factory=list)  # blocked requests off this machine


def is_local(url: str) -> bool:
    """A page's own files, data and blob URLs, and servers on 127.0.0.1."""
    parts = urlparse(url)
    if parts.scheme in ("file", "data", "blob", "about"):
        return True
    return parts.scheme in ("http", "ws") and parts.hostname == "127.0.0.1"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Voila:
    """A running voila server: its base URL, its log file and its process."""

    url: str
    log: Path
    proc: subprocess.Popen

    def page_url(self, notebook: str) -> str:
        return f"{self.url}/voila/render/{notebook}"


def _die_with_parent():
    """On Linux, a ``preexec_fn`` that has the child get SIGTERM when pytest itself dies."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)  # loaded before the fork
    return lambda: libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _stop(proc: subprocess.Popen, timeout: float = 20.0) -> list[int]:
    """SIGTERM voila (it shuts its kernels down), then kill what is left; returns survivors."""
    import psutil

    try:
        family = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        family = []
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    _, alive = psutil.wait_procs(family, timeout=10)
    for p in alive:
        p.kill()
    _, alive = psutil.wait_procs(alive, timeout=5)
    return [p.pid for p in alive]


def start_voila(root: Path, *, timeout: float = 90.0):
    """Serve ``root`` with voila on 127.0.0.1 (a free port); a generator for a fixture."""
    require("voila", importlib.util.find_spec("voila") is not None)
    port = free_port()
    runtime = root / ".runtime"
    runtime.mkdir(exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", MPLBACKEND="Agg",
               JUPYTER_PLATFORM_DIRS="1", JUPYTER_RUNTIME_DIR=str(runtime),
               PYTHONUNBUFFERED="1")
    log = root / "voila.log"
    cmd = [sys.executable, "-m", "voila", str(root), "--no-browser", f"--port={port}",
           "--Voila.ip=127.0.0.1", "--Voila.port_retries=0", "--show_tracebacks=True",
           f"--Voila.connection_dir_root={runtime}"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True,
                                preexec_fn=_die_with_parent())
    server = Voila(f"http://127.0.0.1:{port}", log, proc)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                pytest.fail(f"voila exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(server.url + "/", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"voila did not answer in {timeout:.0f} s:\n{log.read_text()[-3000:]}")
            time.sleep(0.3)
        yield server
    finally:
        survivors = _stop(proc)
        assert not survivors, f"processes left after stopping voila: {survivors}"
