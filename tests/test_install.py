"""A plain install works: the wheel carries every file of the packages and of soul/ and
scenarios/; installed from it into a fresh venv (`--no-deps`; this venv's site-packages on its
path for the dependencies, never its editable nanocode), the commands run from another
directory; a wheel missing its data says which file, exit 2. About 15 s, most of it the build."""

import hashlib
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from factory.store import Store
from nanocode import paths

REPO = Path(__file__).resolve().parents[1]
# repo folder -> where the wheel puts it (pyproject.toml's package-dir)
FOLDERS = {"nanocode": "nanocode", "factory": "factory", "trainer": "trainer", "evals": "evals",
           "agent": "agent", "soul": "nanocode/soul", "scenarios": "nanocode/scenarios"}


def _files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for folder in FOLDERS for p in (root / folder).rglob("*")
                  if p.is_file() and "__pycache__" not in p.parts)


def _run(*argv, **kw) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # only what the venv itself sees
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, env=env, timeout=300, **kw)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(the wheel, the fresh venv it is installed in). Built from a copy of the tree, so the
    build writes nothing into the checkout."""
    tmp = tmp_path_factory.mktemp("install")
    src = tmp / "src"
    for name in _files(REPO) + ["pyproject.toml", "README.md"]:
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, src / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    build = _run(*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", tmp / "dist", src)
    assert build.returncode == 0, build.stderr
    wheel = next((tmp / "dist").glob("nanocode-*.whl"))
    venv = tmp / "venv"
    assert _run(sys.executable, "-m", "venv", "--without-pip", venv).returncode == 0
    site = Path(_run(venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])")
                .stdout.strip())
    # a plain path line: the dependencies import, but this venv's own .pth files (the editable
    # nanocode finder among them) are not run
    (site / "dev-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    # --ignore-installed: the editable nanocode seen through that path is never uninstalled
    install = _run(*pip, "--python", venv / "bin" / "python", "install", "--no-deps", "--no-index",
                   "--ignore-installed", wheel)
    assert install.returncode == 0, install.stderr
    return wheel, venv, site


def test_the_wheel_carries_every_file_of_the_packages_and_the_data_folders(installed):
    wheel, _, _ = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {name.replace(folder, FOLDERS[folder], 1) for name in _files(REPO) for folder in [name.split("/")[0]]}
    assert "nanocode/soul/SOUL.md" in expected and "factory/seeds/humaneval.jsonl" in expected
    assert not expected - names, f"not in the wheel: {sorted(expected - names)}"
    assert not {n for n in names if n.startswith(("soul/", "scenarios/"))}  # no top-level `soul` package
    # the checkout reads the same files in place
    assert paths.CHECKOUT and paths.shipped("soul/SOUL.md") == REPO / "soul" / "SOUL.md"


def test_the_installed_commands_run_from_another_directory(installed, tmp_path):
    _, venv, site = installed
    where = _run(venv / "bin" / "python", "-c", "import factory, nanocode.spec as s; print(factory.__file__, "
                 "s.DEFAULT_SOUL, s.DEFAULT_TOOLS)", cwd=tmp_path).stdout.split()
    assert where == [str(site / "factory" / "__init__.py"), str(site / "nanocode" / "soul" / "SOUL.md"),
                     str(site / "nanocode" / "soul" / "tools.yaml")]  # the wheel's copy, not the checkout

    build = _run(venv / "bin" / "factory", "build", "--limit", "3", cwd=tmp_path)
    assert build.returncode == 0, build.stderr
    store = Store(read_only=True)
    meta = store.finished(1)
    assert meta["soul_sha256"] == hashlib.sha256((REPO / "soul" / "SOUL.md").read_bytes()).hexdigest()
    assert meta["summary"]["inputs done"] == 3
    store.close()

    help_ = _run(venv / "bin" / "trainer", "tokenizer", "eval", "--help", cwd=tmp_path)
    assert help_.returncode == 0 and "Usage: trainer tokenizer eval" in help_.stdout, help_.stderr


@pytest.mark.parametrize("missing, says", [
    ("nanocode/soul/SOUL.md", "{site}/nanocode/soul/SOUL.md: no such file"),
    ("factory/seeds/coding.jsonl", "seed file factory/seeds/coding.jsonl: no such file"),
])
def test_a_wheel_missing_its_data_names_the_file(installed, tmp_path, missing, says):
    _, venv, site = installed
    path = site / missing
    path.rename(path.with_name(path.name + ".away"))
    try:
        run = _run(venv / "bin" / "factory", "build", "--limit", "3", cwd=tmp_path)
    finally:
        path.with_name(path.name + ".away").rename(path)
    assert (run.returncode, run.stderr.strip()) == (2, "error: " + says.format(site=site))
    assert not (tmp_path / "home").exists()  # stopped before the store was opened
