"""Starts real `tollgate gateway` processes for the SDK tests.

`gateway`: mock backends only. The config document is produced by
`tollgate render -f tests/sdk/manifests` (the same path the controller takes), written to a
temporary directory, and served by the binary in $TOLLGATE_BIN (default: target/debug/tollgate).

`native_gateway`: the same manifests plus routes whose backends speak Anthropic Messages and
Gemini natively, served by in-process fake upstreams (tests/sdk/fake_native.py) that check each
request as the real provider would; the gateway reads their API keys from a credentials dir.
"""

import os
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("TOLLGATE_BIN", ROOT / "target" / "debug" / "tollgate"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Gateway:
    def __init__(self, api: str, metrics: str):
        self.api = api
        self.metrics_url = metrics

    def metrics(self) -> str:
        with urllib.request.urlopen(self.metrics_url, timeout=5) as r:
            return r.read().decode()

    def series(self, line_prefix: str) -> float:
        for line in self.metrics().splitlines():
            if line.startswith(line_prefix + " "):
                return float(line.split(" ")[-1])
        return 0.0


def start_gateway(work: Path, manifests: Path, creds: dict):
    config = work / "config.json"
    rendered = subprocess.run(
        [str(BIN), "render", "-f", str(manifests)],
        check=True, capture_output=True, text=True,
    )
    config.write_text(rendered.stdout)
    cred_dir = work / "credentials"
    cred_dir.mkdir()
    for name, value in creds.items():
        (cred_dir / name).write_text(value)
    api_port, metrics_port = free_port(), free_port()
    log = open(work / "gateway.log", "w")
    proc = subprocess.Popen(
        [str(BIN), "gateway", "--config", str(config), "--credentials-dir", str(cred_dir),
         "--listen", f"127.0.0.1:{api_port}", "--metrics-listen", f"127.0.0.1:{metrics_port}"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{api_port}"
    deadline = time.time() + 30
    while True:
        try:
            with urllib.request.urlopen(base + "/readyz", timeout=1) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            raise RuntimeError("gateway did not become ready:\n" + (work / "gateway.log").read_text())
        time.sleep(0.1)
    return proc, log, Gateway(base + "/v1", f"http://127.0.0.1:{metrics_port}/metrics")


def stop_gateway(proc, log):
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


@pytest.fixture(scope="session")
def gateway(tmp_path_factory):
    assert BIN.exists(), f"{BIN} not found: run `cargo build` first (or set TOLLGATE_BIN)"
    work = tmp_path_factory.mktemp("gateway")
    proc, log, gw = start_gateway(work, ROOT / "tests" / "sdk" / "manifests", {})
    yield gw
    stop_gateway(proc, log)


@pytest.fixture(scope="session")
def native_gateway(tmp_path_factory):
    from fake_native import ANTHROPIC_KEY, GEMINI_KEY, start_fake

    assert BIN.exists(), f"{BIN} not found: run `cargo build` first (or set TOLLGATE_BIN)"
    work = tmp_path_factory.mktemp("native")
    manifests = work / "manifests"
    shutil.copytree(ROOT / "tests" / "sdk" / "manifests", manifests)
    anthropic, anthropic_url = start_fake("anthropic")
    gemini, gemini_url = start_fake("gemini")
    template = (ROOT / "tests" / "sdk" / "native_routes.yaml.in").read_text()
    (manifests / "native.yaml").write_text(
        template.replace("@ANTHROPIC_URL@", anthropic_url).replace("@GEMINI_URL@", gemini_url)
    )
    creds = {"anthropic-key_api-key": ANTHROPIC_KEY, "gemini-key_api-key": GEMINI_KEY}
    proc, log, gw = start_gateway(work, manifests, creds)
    gw.fakes = {"anthropic": anthropic, "gemini": gemini}
    yield gw
    stop_gateway(proc, log)
    anthropic.shutdown()
    gemini.shutdown()
