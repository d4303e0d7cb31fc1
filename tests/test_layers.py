"""The package graph is one-way (docs/DESIGN.md, "Packages"): nanocode <- trainer, factory, agent
<- evals, plus two designed hand-offs. Every import counts, also the ones inside functions."""

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("nanocode", "trainer", "factory", "agent", "evals")
MAY_IMPORT = {"nanocode": set(), "trainer": {"nanocode"}, "factory": {"nanocode"}, "agent": {"nanocode"},
              "evals": {"nanocode", "trainer", "factory", "agent"}}
# (importing package, imported module): the only crossings between the middle packages
HAND_OFFS = {("trainer", "factory.store"),  # fine-tuning reads `factory:VERSION` from the store
             ("factory", "agent.tools")}    # conversion, rollouts and replay run the real tool runtime


def imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            # `from factory import store` imports the module factory.store
            names.update(f"{node.module}.{a.name}" for a in node.names if node.module in PACKAGES)
    return names


def edges() -> set[tuple[str, str, str]]:
    """(importing package, imported module, the importing file) for every cross-package import."""
    out = set()
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            for name in imports(path):
                target = name.split(".")[0]
                if target in PACKAGES and target != package:
                    out.add((package, name, str(path.relative_to(REPO))))
    return out


def test_every_import_goes_the_one_way():
    wrong = sorted(f"{where} imports {name}" for package, name, where in edges()
                   if name.split(".")[0] not in MAY_IMPORT[package] and (package, name) not in HAND_OFFS
                   and name not in PACKAGES)  # `from factory import store` is checked as factory.store
    assert not wrong, "imports against the package graph:\n" + "\n".join(wrong)


def test_the_package_graph_has_no_cycle():
    graph = {p: {n.split(".")[0] for q, n, _ in edges() if q == p} for p in PACKAGES}
    state = {}

    def visit(p, path):
        assert state.get(p) != "open", f"import cycle: {' -> '.join(path + [p])}"
        if state.get(p) is None:
            state[p] = "open"
            for q in graph[p]:
                visit(q, path + [p])
            state[p] = "done"

    for p in PACKAGES:
        visit(p, [])


def test_the_check_sees_imports_inside_functions(tmp_path):
    # the checker itself: a lazy import against the graph is still an import
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from trainer.template import render\n    import agent.session\n")
    assert {"trainer.template", "agent.session"} <= imports(f)
