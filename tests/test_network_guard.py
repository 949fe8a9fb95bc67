"""Nothing reaches the network at run time (issue 15): an outbound connection attempt from the extension's
code, in the test process or in a subprocess it starts, fails the run even when the code swallows the error;
loopback stays open (testing/network_guard.py)."""

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from onestep_sr.testing import network_guard

REPO = Path(__file__).resolve().parent.parent
ADDRESS = "203.0.113.7"  # TEST-NET-3 (RFC 5737): never a real host

INNER_TEST = textwrap.dedent('''
    import subprocess, sys, urllib.request
    from PIL import Image
    import onestep_sr.cli as cli
    import onestep_sr.files.images as images

    def test_an_upscale(tmp_path, monkeypatch):
        real = images.image_files

        def image_files_that_phone_home(folder):
            if {attempt!r} == "in-process":
                try:  # a swallowed "update check": the code goes on as if nothing happened
                    urllib.request.urlopen("http://{address}/weights.safetensors", timeout=1)
                except OSError:
                    pass
            elif {attempt!r} == "subprocess":
                subprocess.run([sys.executable, "-c", "import socket\\ntry:\\n    "
                                "socket.create_connection(('{address}', 80), timeout=1)\\nexcept OSError:\\n    pass"])
            return real(folder)

        monkeypatch.setattr(images, "image_files", image_files_that_phone_home)
        Image.new("RGB", (12, 12)).save(tmp_path / "a.png")
        assert cli.main(["upscale", str(tmp_path), "-o", str(tmp_path / "out"), "--precision", "fp32"]) == 0
''')


def run_inner(tmp_path, attempt):
    """A pytest run of INNER_TEST with the guard plugin, in an environment of its own (not this run's log)."""
    (tmp_path / "test_inner.py").write_text(INNER_TEST.format(attempt=attempt, address=ADDRESS))
    env = {key: value for key, value in os.environ.items() if key not in (network_guard.LOG_ENV, "PYTHONPATH")}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "onestep_sr.testing.network_guard",
                           "-p", "no:cacheprovider", str(tmp_path / "test_inner.py")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


def test_a_run_without_attempts_passes(tmp_path):
    result = run_inner(tmp_path, "none")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("attempt", ["in-process", "subprocess"])
def test_an_attempt_fails_the_run_even_when_the_code_swallows_it(tmp_path, attempt):
    result = run_inner(tmp_path, attempt)
    assert "1 passed" in result.stdout  # the test itself did not notice
    assert result.returncode == 1, result.stdout + result.stderr
    assert "1 outbound network attempt(s): they fail the run" in result.stdout
    assert f"'{ADDRESS}'" in result.stdout  # the record names the address and where the attempt came from
    assert ("image_files_that_phone_home" if attempt == "in-process" else "in create_connection") in result.stdout


def test_this_run_is_guarded():
    assert os.environ.get(network_guard.LOG_ENV)
    with pytest.raises(network_guard.OutboundConnectionError):
        socket.getaddrinfo("example.com", 80)
    assert network_guard.refused_attempts(os.environ[network_guard.LOG_ENV])  # recorded ...
    Path(os.environ[network_guard.LOG_ENV]).unlink()  # ... and, this once, forgiven: it was this test's own


def test_loopback_stays_open():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        with socket.create_connection(server.getsockname(), timeout=5):
            pass
        with socket.create_connection(("localhost", server.getsockname()[1]), timeout=5):
            pass


@pytest.mark.parametrize("host, local", [("127.0.0.1", True), ("127.8.9.1", True), ("::1", True), ("0.0.0.0", True),
                                         ("::ffff:127.0.0.1", True), ("localhost", True), (None, True),
                                         ("10.0.0.1", False), ("8.8.8.8", False), ("2001:db8::1", False),
                                         ("pypi.org", False)])
def test_what_counts_as_this_machine(host, local):
    assert network_guard.is_local(host) is local
