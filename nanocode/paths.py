"""Where the project's own data files are, in a checkout and in an installed wheel.

The repo keeps its data where people edit it: `soul/` (SOUL.md, tools.yaml, examples/),
`scenarios/`, `factory/seeds/`, and prompts and templates beside their code. A wheel carries
`soul/` and `scenarios/` inside this package (pyproject.toml maps `nanocode.soul` to `soul/`
and `nanocode.scenarios` to `scenarios/`) and the rest as package data of their own packages.
So one repo-relative path names the same file in both layouts, `shipped("soul/SOUL.md")`,
and the docs, configs and flags speak in those paths only.

A checkout is told apart by its pyproject.toml next to the packages (site-packages has none).
`shipped` never checks that the file is there: the caller reads it and names the path it
could not find, which in a wheel missing its data is the file the wheel should have carried.
"""

from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
ROOT = PACKAGE.parent  # a checkout's root, or the site-packages the wheel went into
CHECKOUT = (ROOT / "pyproject.toml").is_file()
INSIDE_PACKAGE = ("soul", "scenarios")  # the top-level folders a wheel carries under nanocode/


def shipped(relative: str | Path) -> Path:
    """The file or folder a repo-relative path (`soul/SOUL.md`, `scenarios`,
    `factory/seeds/coding.jsonl`) names in this install."""
    relative = Path(relative)
    if not CHECKOUT and relative.parts[:1] and relative.parts[0] in INSIDE_PACKAGE:
        return PACKAGE / relative
    return ROOT / relative
