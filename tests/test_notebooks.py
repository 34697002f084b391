"""Every notebook, run top to bottom in a fresh kernel as a student runs it (its checks are
``assert``s in its cells; any error fails the test with the cell's traceback), and written with
its outputs to ``artifacts/notebooks/``: the docs build publishes those copies, so the notebook
pages show what this run computed (``tests/test_docs.py`` builds the site after these run)."""
from pathlib import Path

import nbformat
import pytest

from test_docs import NOTEBOOKS, load_hook


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_and_leaves_its_executed_copy(path: Path):
    hook = load_hook()
    out = hook.execute(path)  # raises CellExecutionError, with the cell, on any error
    assert hook.executed_copy(path) == out  # fresh: the docs build will publish it
    nb = nbformat.read(out, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.execution_count is not None for c in code)
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]
    assert any(c.outputs for c in code), "a notebook that shows nothing"
