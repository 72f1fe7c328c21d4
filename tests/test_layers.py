"""The packages' layers, read from the source (every import, those inside functions included): no import
cycle between the trainer's packages, the trainer never imports the operator, and the operator imports
only the trainer's contracts (its config and runnable check, the checkpoint layout, the CLI it serves, and
`lvr_trainer.contracts`: the progress wire, exit statuses and termination marks), never its internals."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRAINER, OPERATOR = ROOT / "trainer" / "lvr_trainer", ROOT / "operator" / "lvr_operator"
OPERATOR_MAY_IMPORT = {"lvr_trainer.config", "lvr_trainer.runnable", "lvr_trainer.layout", "lvr_trainer.cli"}
CONTRACTS = ["lvr_trainer", "contracts"]          # and every module of this package


def imports_of(package: Path) -> dict[str, set[tuple[str, str]]]:
    """{module: {(imported module, file:line)}} for every lvr_* import in the package's files."""
    out: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for f in package.rglob("*.py"):
        module = ".".join(f.relative_to(package.parent).with_suffix("").parts).removesuffix(".__init__")
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else [])
            for name in names:
                if name.startswith(("lvr_trainer", "lvr_operator")):
                    out[module].add((name, f"{f.relative_to(ROOT)}:{node.lineno}"))
    return out


def package_of(module: str) -> str:
    """lvr_trainer.train.rl -> lvr_trainer.train; a top-level module (lvr_trainer.config) is its own."""
    return ".".join(module.split(".")[:2])


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one package (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))
    for v in list(edges):
        if v not in index:
            visit(v)
    return out


def test_the_trainers_packages_import_each_other_without_a_cycle():
    edges: dict[str, set[str]] = defaultdict(set)
    where: dict[tuple[str, str], str] = {}
    for module, targets in imports_of(TRAINER).items():
        for target, at in targets:
            a, b = package_of(module), package_of(target)
            if a != b and b.startswith("lvr_trainer"):
                edges[a].add(b)
                where.setdefault((a, b), at)
    found = cycles(edges)
    detail = [f"{c}: " + "; ".join(f"{a} -> {b} ({where[a, b]})" for a in c for b in c if (a, b) in where)
              for c in found]
    assert not found, "import cycles between packages:\n" + "\n".join(detail)


def test_the_trainer_never_imports_the_operator_and_the_operator_only_its_contracts():
    upward = [(m, t, at) for m, ts in imports_of(TRAINER).items() for t, at in ts if t.startswith("lvr_operator")]
    assert not upward, f"the trainer imports the operator: {upward}"
    internal = [(t, at) for ts in imports_of(OPERATOR).values() for t, at in ts
                if t.startswith("lvr_trainer") and t not in OPERATOR_MAY_IMPORT and t.split(".")[:2] != CONTRACTS]
    assert not internal, f"the operator imports trainer internals: {internal}"


def test_the_check_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
