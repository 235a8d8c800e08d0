"""The layering of DESIGN.md, enforced: the import-linter contracts in ``pyproject.toml``
(``[tool.importlinter]``: layers, emulator-not-fit, spark-not-dask, spark-engine, acyclic) hold,
no module of ``gsn_dask`` or ``spark_compat`` is part of an import cycle, and each check reports
a violation when one is added (so none of them passes vacuously)."""
from __future__ import annotations

import copy
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grimp
import pytest
from importlinter.api import read_configuration
from importlinter.cli import lint_imports
from importlinter.contracts.acyclic_siblings import AcyclicSiblingsContract
from importlinter.contracts.forbidden import ForbiddenContract
from importlinter.contracts.layers import LayersContract
from importlinter.domain.contract import Contract

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
ROOTS = ("gsn_dask", "spark_compat")
CONTRACT_TYPES: dict[str, type[Contract]] = {
    "layers": LayersContract,
    "forbidden": ForbiddenContract,
    "acyclic_siblings": AcyclicSiblingsContract,
}


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    """The import graph of both root packages (direct, lazy and TYPE_CHECKING imports)."""
    return grimp.build_graph(*ROOTS, cache_dir=None)


def _contract(contract_id: str) -> Contract:
    """The contract of ``pyproject.toml`` with this id, as an import-linter contract object."""
    cfg = read_configuration(str(PYPROJECT))
    for opts in cfg["contracts_options"]:
        if opts.get("id") == contract_id:
            fields = {k: v for k, v in opts.items() if k not in ("id", "name", "type")}
            return CONTRACT_TYPES[opts["type"]](name=opts["name"], session_options=cfg["session_options"],
                                                contract_options=fields)
    raise KeyError(contract_id)


def _edges(obj: Any) -> Iterator[tuple[str, str]]:
    """Every (importer, imported) pair named anywhere in a contract check's metadata."""
    if isinstance(obj, dict):
        if isinstance(obj.get("importer"), str) and isinstance(obj.get("imported"), str):
            yield obj["importer"], obj["imported"]
        for v in obj.values():
            yield from _edges(v)
    elif isinstance(obj, (list, tuple, set, frozenset)):
        for v in obj:
            yield from _edges(v)


def import_cycles(g: grimp.ImportGraph) -> list[str]:
    """Each direct import ``a -> b`` that lies on a cycle (``b`` reaches ``a`` again), with the
    shortest way back, e.g. ``gsn_dask.plots -> gsn_dask.validate -> gsn_dask.plots``."""
    found = []
    for a in sorted(g.modules):
        for b in sorted(g.find_modules_directly_imported_by(a)):
            back = g.find_shortest_chain(importer=b, imported=a)
            if back:
                found.append(" -> ".join((a, *back)))
    return found


def test_pyproject_contracts_are_kept(capsys: pytest.CaptureFixture[str]) -> None:
    """`lint-imports` (the same check, run by the suite): every contract in pyproject.toml is kept."""
    code = lint_imports(config_filename=str(PYPROJECT), no_cache=True, no_logo=True)
    out = capsys.readouterr().out
    assert code == 0, out


def test_no_import_cycles(graph: grimp.ImportGraph) -> None:
    cycles = import_cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_plots_does_not_import_validate(graph: grimp.ImportGraph) -> None:
    assert not graph.chain_exists(importer="gsn_dask.plots", imported="gsn_dask.validate")


# (contract id, added import): each must break the contract and be named in its report
ADDED_IMPORTS = [
    ("layers", "gsn_dask.cube", "gsn_dask.cli"),
    ("layers", "gsn_dask.plots", "gsn_dask.validate.compare"),
    ("layers", "gsn_dask.fit.block", "gsn_dask.run"),
    ("emulator-not-fit", "gsn_dask.emulator", "gsn_dask.fit.config"),
    ("emulator-not-fit", "gsn_dask.emulator_torch", "gsn_dask.calibration"),
    ("spark-not-dask", "spark_compat.runner", "gsn_dask.pipeline"),
    ("spark-engine", "spark_compat.session", "gsn_dask.validate"),
]


@pytest.mark.parametrize(("contract_id", "importer", "imported"), ADDED_IMPORTS)
def test_contract_reports_an_added_import(graph: grimp.ImportGraph, contract_id: str, importer: str,
                                          imported: str) -> None:
    """The project's own contract, on the real graph plus one forbidden import, is broken and
    its report names that import."""
    g = copy.deepcopy(graph)
    g.add_import(importer=importer, imported=imported, line_number=1, line_contents=f"import {imported}")
    check = _contract(contract_id).check(g, verbose=False)
    assert not check.kept
    assert (importer, imported) in set(_edges(check.metadata)), check.metadata


def test_acyclic_contract_reports_an_added_cycle(graph: grimp.ImportGraph) -> None:
    """``gsn_dask.io`` imports ``gsn_dask.cube``; cube importing io back is a sibling cycle."""
    g = copy.deepcopy(graph)
    g.add_import(importer="gsn_dask.cube", imported="gsn_dask.io.ingest", line_number=1,
                 line_contents="import gsn_dask.io.ingest")
    check = _contract("acyclic").check(g, verbose=False)
    assert not check.kept
    assert "gsn_dask" in check.metadata["cycle_breakers_by_package"]


def test_cycle_check_reports_an_added_cycle(graph: grimp.ImportGraph) -> None:
    g = copy.deepcopy(graph)
    g.add_import(importer="gsn_dask.plots", imported="gsn_dask.validate.report", line_number=1,
                 line_contents="from .validate import report")
    cycles = import_cycles(g)
    assert any(c.startswith("gsn_dask.plots -> gsn_dask.validate.report") for c in cycles), cycles


def _toy_package(root: Path, low_imports: str) -> None:
    """A package ``toylayers`` with modules high, mid, low; ``low`` imports ``low_imports``."""
    pkg = root / "toylayers"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "high.py").write_text("from . import mid\n")
    (pkg / "mid.py").write_text("from . import low\n")
    (pkg / "low.py").write_text(f"{low_imports}\n")
    (root / "contracts.toml").write_text(textwrap.dedent("""\
        [tool.importlinter]
        root_packages = ["toylayers"]

        [[tool.importlinter.contracts]]
        id = "layers"
        name = "high > mid > low"
        type = "layers"
        containers = ["toylayers"]
        exhaustive = true
        layers = ["high", "mid", "low"]

        [[tool.importlinter.contracts]]
        id = "acyclic"
        name = "no sibling cycles"
        type = "acyclic_siblings"
        ancestors = ["toylayers"]
    """))


@pytest.mark.parametrize(("low_imports", "code"), [("import json", 0), ("from . import high", 1)])
def test_lint_imports_fails_on_a_package_with_a_forbidden_import(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], low_imports: str, code: int
) -> None:
    """End to end (toml file -> graph -> exit status): a clean toy package passes, the same
    package with an upward import fails, naming it."""
    _toy_package(tmp_path, low_imports)
    monkeypatch.syspath_prepend(str(tmp_path))
    got = lint_imports(config_filename=str(tmp_path / "contracts.toml"), no_cache=True, no_logo=True)
    out = capsys.readouterr().out
    assert got == code, out
    if code:
        assert "toylayers.low" in out and "toylayers.high" in out and "BROKEN" in out
