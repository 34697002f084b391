"""The notebooks are tests: nbval runs each in a fresh kernel, every code cell a test
(``python -m pytest``, or on its own ``pytest --nbval-lax notebooks``). Their checks are
``assert``s in the cells.

This plugin keeps what that run shows: once every code cell of a notebook has passed, it writes
the notebook with the outputs nbval kept on each cell (``IPyNbCell.test_outputs``) to
``artifacts/notebooks/``, tagged with the hash of its cells, and the docs build publishes that
copy (``docs/hooks/cove_docs.py``). No notebook runs twice; a notebook with a failing cell, or
run in part, leaves no copy.
"""
from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import pytest
from IPython.core.displayhook import DisplayHook

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("cove_docs", ROOT / "docs" / "hooks" / "cove_docs.py")
docs_hook = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(docs_hook)

_runs: dict[Path, dict[int, list | None]] = {}  # {notebook: {code cell number: outputs}}, cells that passed


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    report = (yield).get_result()
    notebook = getattr(item.parent, "nb", None)  # nbval's IPyNbFile holds the notebook it read
    if report.when != "call" or notebook is None or not hasattr(item, "cell_num"):
        return
    skipped = report.skipped and item.options["skip"]  # NBVAL_SKIP: runs nothing, fails nothing
    cells = _runs.setdefault(item.parent.path, {})
    if (report.passed and not hasattr(report, "wasxfail")) or skipped:
        outputs = list(item.test_outputs or [])
        if DisplayHook.semicolon_at_end_of_expression(item.cell.source):
            # nbval runs cells outside the kernel's history, so IPython does not silence a last
            # expression ending in ';': the copy leaves its result out, as Jupyter shows the cell
            outputs = [o for o in outputs if o.output_type != "execute_result"]
        cells[item.cell_num] = None if skipped else outputs
    code = sum(c.cell_type == "code" for c in notebook.cells)
    if item.cell_num == code - 1:  # the last cell: the notebook is done
        if len(_runs.pop(item.parent.path)) == code:
            docs_hook.write_executed(copy.deepcopy(notebook), item.parent.path.name,  # the cells that ran
                                     [cells[i] for i in range(code)])
