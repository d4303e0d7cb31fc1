"""The sandbox for model-written Bash (agent/sandbox.py): no network, no credentials, only the
workspace writable, nothing outliving the call, CPU and memory limits, the same result format
as unsandboxed, and one clear refusal where bwrap cannot run."""

import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

import agent.tools
from agent.sandbox import Sandbox, unavailable
from agent.tools import Limits, Tools
from nanocode.common import InputError
from tests.conftest import BIN

needs_bwrap = pytest.mark.skipif(bool(unavailable()), reason=f"no sandbox here: {unavailable()}")


@pytest.fixture
def ws(tmp_path):
    root = tmp_path / "ws"
    root.mkdir()
    (root / "a.py").write_text("print('hi')\n")
    return root


def bash(tools, command, **args):
    return tools.run({"name": "Bash", "args": {"command": command, **{k: str(v) for k, v in args.items()}}})


def _running(marker: str) -> list[int]:
    """Live (non-zombie) processes whose command line holds `marker`."""
    pids = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker in cmdline and state != "Z":
            pids.append(int(proc.name))
    return pids


def test_without_bwrap_the_sandbox_is_refused_naming_the_flag(ws, monkeypatch):
    monkeypatch.setattr(agent.tools, "unavailable", lambda: "bubblewrap (bwrap) is not installed")
    with pytest.raises(InputError, match=r"bwrap\) is not installed; pass --unsafe-bash") as e:
        Tools(ws, sandbox=Sandbox())
    assert "\n" not in str(e.value)
    assert bash(Tools(ws), "echo unsafe") == "exit code: 0\nstdout:\nunsafe\nstderr: (empty)"  # asked for


@needs_bwrap
def test_results_read_the_same_as_unsandboxed(ws):
    plain, boxed = Tools(ws), Tools(ws, sandbox=Sandbox())
    for command in ("echo out; echo err >&2; exit 3", "pwd; cat", "true", "kill -9 $$",
                    "python3 a.py", "echo $0; ls"):
        assert bash(boxed, command) == bash(plain, command), command
    assert bash(boxed, "sleep 100", timeout=1) == (
        "error: command timed out after 1s; killed it and its child processes\nstdout: (empty)\nstderr: (empty)")


@needs_bwrap
def test_no_credentials_in_the_environment(ws, monkeypatch):
    for name in ("HF_TOKEN", "OPENAI_API_KEY", "GITHUB_TOKEN", "AWS_SECRET_ACCESS_KEY", "MY_SERVICE_KEY"):
        monkeypatch.setenv(name, "s3cret-value")
    out = bash(Tools(ws, sandbox=Sandbox()), "env")
    assert out.startswith("exit code: 0") and "s3cret" not in out
    names = {line.split("=", 1)[0] for line in out.split("stdout:\n", 1)[1].splitlines() if "=" in line}
    assert {"PATH", "HOME", "PAGER", "GIT_TERMINAL_PROMPT"} <= names
    assert not {n for n in names if n.endswith(("_KEY", "_TOKEN"))}


@needs_bwrap
def test_no_network(ws):
    with socket.socket() as server:  # a listener on this machine's loopback
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        reach = f"exec 3<>/dev/tcp/127.0.0.1/{port} && echo reached"
        assert "reached" in bash(Tools(ws), reach)
        out = bash(Tools(ws, sandbox=Sandbox()), reach)
        assert out.startswith("exit code: 1") and "reached" not in out


@needs_bwrap
def test_only_the_workspace_is_writable(ws, tmp_path):
    (tmp_path / "outside.txt").write_text("secret\n")
    t = Tools(ws, sandbox=Sandbox())
    out = bash(t, f"echo new > made.txt; cat {tmp_path}/outside.txt; echo x > {tmp_path}/outside.txt; "
                  "touch /usr/sandbox-probe")
    assert "Read-only file system" in out and "secret" not in out  # /tmp is its own, empty
    assert (ws / "made.txt").read_text() == "new\n"
    assert (tmp_path / "outside.txt").read_text() == "secret\n" and not os.path.exists("/usr/sandbox-probe")


@needs_bwrap
def test_credential_stores_are_masked_and_toolchains_still_run(ws, monkeypatch):
    monkeypatch.setenv("HOME", str(ws))  # `nanocode chat --sandbox` in the home directory
    (ws / ".ssh").mkdir()
    (ws / ".ssh" / "id_ed25519").write_text("PRIVATE KEY\n")
    (ws / ".netrc").write_text("machine hub password s3cret\n")
    out = bash(Tools(ws, sandbox=Sandbox()), "ls -A .ssh; cat .netrc; echo x > .netrc; cat a.py")
    assert "PRIVATE" not in out and "s3cret" not in out and "id_ed25519" not in out
    assert "print('hi')" in out  # the rest of the workspace reads as usual
    assert (ws / ".netrc").read_text() == "machine hub password s3cret\n"
    # the factory puts its own Python first on PATH (here a venv over a pyenv in /root)
    out = bash(Tools(ws, sandbox=Sandbox(), bin_dirs=[BIN]), "python -c 'import sys; print(sys.executable)'")
    assert out == f"exit code: 0\nstdout:\n{BIN / 'python'}\nstderr: (empty)"


@needs_bwrap
def test_a_setsid_grandchild_dies_with_the_call(ws):
    marker = f"{time.time_ns() % 10**6 + 10**6}.{uuid.uuid4().int % 1000}"  # a unique sleep length
    out = bash(Tools(ws, sandbox=Sandbox()), f"setsid sleep {marker} & echo started")
    assert out == "exit code: 0\nstdout:\nstarted\nstderr: (empty)"
    deadline = time.monotonic() + 2
    while _running(f"sleep {marker}") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _running(f"sleep {marker}")


@needs_bwrap
def test_cpu_and_memory_limits(ws):
    t = Tools(ws, sandbox=Sandbox(cpu_seconds=1, memory_mb=512), limits=Limits(bash_timeout=20))
    t0 = time.monotonic()
    assert bash(t, "while :; do :; done").startswith("exit code: -9 (killed by SIGKILL)")
    assert time.monotonic() - t0 < 10  # the CPU limit, long before the wall-clock timeout
    out = bash(t, f"{sys.executable} -c 'bytearray(2 << 30)'")
    assert out.startswith("exit code: 1") and "MemoryError" in out


def test_nanocode_run_sandbox_without_bwrap_is_one_line(ws):
    env = {**os.environ, "PATH": str(BIN)}  # no bwrap on this PATH
    r = subprocess.run([str(BIN / "nanocode"), "run", "task", "--sandbox", "--workspace", str(ws),
                        "--base-url", "http://127.0.0.1:9/v1"], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 2 and r.stderr.startswith("error: --sandbox: bubblewrap (bwrap) is not installed")
    assert r.stderr.count("\n") == 1, r.stderr
