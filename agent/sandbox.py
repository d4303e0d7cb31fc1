"""The sandbox for model-written commands: Bash under bubblewrap (`bwrap`, Debian's `bubblewrap`),
the mechanism Claude Code's own sandbox uses on Linux.

Once a model writes the calls (the factory's generator, reading Hub seeds that may carry a prompt
injection), a command is untrusted input that runs unapproved. Under `Sandbox` it gets:

  - no network: --unshare-all gives it its own network namespace, holding only a loopback;
  - the system read-only (/ bound read-only), so every toolchain works as outside (a pyenv shim,
    rustup, nvm, the factory's own venv), with /tmp and /run replaced by empty tmpfs mounts (agent,
    X11 and docker sockets live there) and the well-known credential stores (SECRETS: ~/.ssh,
    ~/.aws, the Hugging Face token, shell histories...) masked by empty ones, so a command cannot
    print one into a result that a dataset records. A list cannot know every secret file: the
    network rule is what keeps anything from leaving the machine;
  - the workspace as the only writable bind, plus a private /tmp that is also its HOME;
  - a scrubbed environment: PATH, HOME, PYTHONDONTWRITEBYTECODE, the locale and terminal
    variables and agent/shell.py QUIET_ENV, nothing else (no OPENAI_API_KEY, HF_TOKEN, *_KEY or *_TOKEN);
  - its own PID namespace: when the command ends or is killed, every process it started dies
    with the namespace, a `setsid` escapee included (--die-with-parent ties it to us);
  - CPU, memory and file-size limits (ulimit, set inside before the command starts), on top of
    Bash's wall-clock timeout.

The workspace is bound at its own path, so `pwd` and tracebacks print what they print outside and
a recorded result replays the same. Where bwrap is missing or cannot make namespaces here,
`unavailable()` says why in one line and Tools refuses to start: running unsandboxed must be asked
for (`--unsafe-bash` in the factory).
"""

import functools
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

HIDDEN = ("/tmp", "/run")  # replaced by empty tmpfs: sockets live there
SECRETS = ("~/.ssh", "~/.aws", "~/.azure", "~/.config/gcloud", "~/.config/gh", "~/.docker", "~/.kube",
           "~/.gnupg", "~/.password-store", "~/.netrc", "~/.git-credentials", "~/.pypirc", "~/.npmrc",
           "~/.cargo/credentials", "~/.cargo/credentials.toml", "~/.huggingface", "~/.cache/huggingface/token",
           "~/.cache/huggingface/stored_tokens", "~/.bash_history", "~/.zsh_history", "~/.python_history")
KEPT_ENV = ("LANG", "LANGUAGE", "TERM", "TZ")  # and every LC_*: how output looks, never a secret
# no bytecode: an Edit within the same second that keeps a module's size would run its stale .pyc
FIXED_ENV = {"HOME": "/tmp", "PYTHONDONTWRITEBYTECODE": "1"}
_LIMITS = 'ulimit -t {cpu} -v {mem} -f {fsize} && exec bash -c "$1"'  # $0 stays `bash`, as unsandboxed


@dataclass(frozen=True)
class Sandbox:
    cpu_seconds: int = 600     # CPU time per process (the wall-clock cap is Bash's timeout)
    memory_mb: int = 4096      # address space per process
    file_mb: int = 1024        # the largest file a command may write
    tmp_mb: int = 1024         # size of the private /tmp (and /run)
    secrets: tuple[str, ...] = SECRETS  # files and folders masked, when they exist

    def env(self, path: str, quiet: dict) -> dict:
        """The command's whole environment: nothing of ours it was not meant to see."""
        kept = {k: v for k, v in os.environ.items() if k in KEPT_ENV or k.startswith("LC_")}
        return {**kept, "PATH": path, **FIXED_ENV, **quiet}

    def argv(self, root) -> list[str]:
        """`bash -c` inside bwrap, cwd the workspace `root`: the command goes last."""
        root = str(root)
        argv = ["bwrap", "--unshare-all", "--die-with-parent", "--new-session",
                "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
        argv += [a for h in HIDDEN for a in ("--size", str(self.tmp_mb << 20), "--tmpfs", h)]
        # our own Python stays visible (read-only) when it lives under a hidden folder, as a checkout
        # in /tmp does: the factory puts it first on PATH and the agentic eval runs tests with it
        for p in dict.fromkeys(os.path.realpath(x) for x in (sys.prefix, sys.base_prefix)):
            if any(Path(p).is_relative_to(h) for h in HIDDEN) and os.path.isdir(p):
                argv += ["--ro-bind", p, p]
        argv += ["--bind", root, root]
        for p in self._secrets():  # those under a hidden folder are gone already, unless in the workspace
            if not any(Path(p).is_relative_to(h) for h in HIDDEN) or Path(p).is_relative_to(root):
                argv += ["--tmpfs", p, "--remount-ro", p] if os.path.isdir(p) else ["--ro-bind", os.devnull, p]
        argv += ["--chdir", root, "--"]
        limits = _LIMITS.format(cpu=self.cpu_seconds, mem=self.memory_mb << 10, fsize=self.file_mb << 10)
        return argv + ["bash", "-c", limits, "bash"]

    def _secrets(self) -> list[str]:
        """The existing credential stores, resolved; Hugging Face's token where HF_HOME and
        HF_TOKEN_PATH move it."""
        hf = [os.path.join(os.environ["HF_HOME"], "token")] if os.environ.get("HF_HOME") else []
        hf += [os.environ["HF_TOKEN_PATH"]] if os.environ.get("HF_TOKEN_PATH") else []
        found = (os.path.realpath(os.path.expanduser(p)) for p in (*self.secrets, *hf))
        return [p for p in dict.fromkeys(found) if os.path.exists(p)]


@functools.cache
def unavailable() -> str | None:
    """Why the sandbox cannot run on this machine (None: it can). Asked once per process."""
    if shutil.which("bwrap") is None:
        return "bubblewrap (bwrap) is not installed (apt-get install bubblewrap)"
    probe = subprocess.run(["bwrap", "--unshare-all", "--die-with-parent", "--ro-bind", "/", "/", "true"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        said = probe.stderr.strip().splitlines()
        return f"bwrap cannot make a sandbox here ({said[-1] if said else f'exit status {probe.returncode}'})"
    return None
