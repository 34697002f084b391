"""The docs site (its hook, and the whole site built strict and offline after the notebooks ran),
the notebooks' hygiene (committed without outputs, in the nav, importing from cove) and the
nbval run that leaves their executed copies for the site."""
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def load_hook():
    spec = importlib.util.spec_from_file_location("cove_docs", ROOT / "docs" / "hooks" / "cove_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def mkdocs_config() -> dict:
    class Loader(yaml.SafeLoader):
        pass

    Loader.add_multi_constructor("!", lambda loader, suffix, node: None)  # material's !!python tags
    return yaml.load((ROOT / "mkdocs.yml").read_text(), Loader=Loader)


def nav_paths(nav) -> list[str]:
    if isinstance(nav, str):
        return [nav]
    if isinstance(nav, dict):
        return [p for v in nav.values() for p in nav_paths(v)]
    return [p for item in nav for p in nav_paths(item)]


def test_eight_notebooks_without_outputs_and_short_cells():
    assert [p.stem[:2] for p in NOTEBOOKS] == [f"{i:02d}" for i in range(8)]
    for path in NOTEBOOKS:
        nb = json.loads(path.read_text())
        code = [c for c in nb["cells"] if c["cell_type"] == "code"]
        assert code, path.name
        for c in code:
            source = "".join(c["source"])
            if "# NBVAL_CHECK_OUTPUT" not in source:  # only outputs that nbval checks are stored
                assert c["outputs"] == [] and c["execution_count"] is None, f"{path.name} has outputs"
            assert len(source.splitlines()) <= 15, f"{path.name}: a cell is too long"
        text = "".join("".join(c["source"]) for c in code)
        assert "import cove" in text or "from cove" in text
        assert re.search(r"^\s*(def|class) ", text, re.M) is None, f"{path.name} defines its own logic"


def test_every_page_and_notebook_is_in_the_nav():
    config = mkdocs_config()
    paths = nav_paths(config["nav"])
    for path in NOTEBOOKS:
        assert f"notebooks/{path.name}" in paths
    for page in paths:
        if not page.endswith(".ipynb"):
            assert (ROOT / "docs" / page).is_file(), page
    docs_pages = {str(p.relative_to(ROOT / "docs")) for p in (ROOT / "docs").rglob("*.md")}
    assert docs_pages <= set(paths), f"pages missing from the nav: {docs_pages - set(paths)}"


def test_build_stays_offline():
    config = mkdocs_config()
    assert config["theme"]["font"] is False
    names = [next(iter(p)) if isinstance(p, dict) else p for p in config["plugins"]]
    assert "social" not in names and "privacy" not in names
    jupyter = next(p["mkdocs-jupyter"] for p in config["plugins"] if isinstance(p, dict) and "mkdocs-jupyter" in p)
    assert jupyter["execute"] is False


def test_api_pages_name_existing_modules():
    hook = load_hook()
    for page in (ROOT / "docs" / "api").glob("*.md"):
        for name in hook.API_MARK.findall(page.read_text()):
            assert hook.module_exists(name), f"{page.name} documents {name}, which does not exist"
    assert hook.api_block("cove.correspondence") == "::: cove.correspondence"
    assert "not in this checkout" in hook.api_block("cove.no_such_module")


def test_benchmarks_markdown_renders_tables_or_says_absent(tmp_path):
    hook = load_hook()
    assert "have not been run" in hook.benchmarks_markdown(tmp_path)
    (tmp_path / "quality.json").write_text(json.dumps(
        {"edit": {"cove": {"psnr": 27.123456, "warp_error": 3.5}, "per-frame": {"psnr": 24.0}},
         "gates": {"edit.cove.psnr": True}, "date": "2024-01-01"}))
    (tmp_path / "benchmarks_cpu.json").write_text(json.dumps([{"frames": 8, "seconds": 1.25}]))
    md = hook.benchmarks_markdown(tmp_path)
    assert "## `quality.json`" in md and "## `benchmarks_cpu.json`" in md
    assert "| cove | 27.12 | 3.5 |" in md  # a dict of flat dicts is one table
    assert "| 8 | 1.25 |" in md
    (tmp_path / "benchmarks_long.json").write_text(json.dumps({"runs": [{"i": i} for i in range(30)]}))
    md = hook.benchmarks_markdown(tmp_path)
    assert "| 11 |" in md and "| 12 |" not in md and "18 more rows" in md  # long lists are cut
    (tmp_path / "benchmarks_bad.json").write_text("{not json")
    assert "Could not read `benchmarks_bad.json`" in hook.benchmarks_markdown(tmp_path)


def test_a_named_benchmark_is_drawn_in_place(tmp_path):
    hook = load_hook()
    data = {"machine": {"cpu": "x"}, "sections": {"table5": {
        "title": "Table 5: accuracy", "note": "**This model does not show the paper's effect.**",
        "rows": [{"method": "optical flow", "PCK": 0.98, "paper PCK": 0.87},
                 {"method": "diffusion features", "PCK": 0.73, "paper PCK": 0.92}], "plot": ["method", "PCK"]}}}
    (tmp_path / "benchmarks_paper_cpu.json").write_text(json.dumps(data))
    (tmp_path / "benchmarks_speed_cpu.json").write_text(json.dumps([{"frames": 8}]))
    page = "A\n<!-- cove:benchmarks benchmarks_paper_cpu.json -->\nB\n<!-- cove:benchmarks -->"
    md = hook.on_page_markdown(page, None, {"docs_dir": str(tmp_path)}, None)
    drawn, rest = md.split("\nB\n")
    assert "### Table 5: accuracy" in drawn and "| diffusion features | 0.73 | 0.92 |" in drawn
    assert drawn.count("<svg") == 1 and "does not show" in drawn and "[raw JSON](benchmarks_paper_cpu.json)" in drawn
    assert "benchmarks_paper_cpu.json" not in rest and "## `benchmarks_speed_cpu.json`" in rest
    assert "is not in this checkout" in hook.one_benchmark_markdown(tmp_path, "benchmarks_paper_cuda.json")


@pytest.mark.parametrize("value, text", [(0.123456, "0.1235"), (True, "True"), (None, "–"), ([1, 2], "1, 2"), ("a|b", "a\\|b")])
def test_benchmark_cells(value, text):
    assert load_hook().fmt(value) == text


def test_mkdocs_build_strict_offline(tmp_path):
    """The whole site builds in strict mode (any warning fails) and links no web fonts."""
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(site)],
                            cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert (site / "notebooks" / "00_quickstart" / "index.html").is_file()
    assert "window_similarity" in (site / "api" / "correspondence" / "index.html").read_text()
    assert "Benchmarks" in (site / "benchmarks" / "index.html").read_text()
    pages = "".join(p.read_text(errors="ignore") for p in site.rglob("*.html"))
    assert "fonts.googleapis.com" not in pages and "fonts.gstatic.com" not in pages
    # maths is typeset by the site's own MathJax: no script is loaded from another host
    assert re.search(r"<script[^>]+src=[\"']https?:", pages) is None
    assert (site / "javascripts" / "mathjax" / "MathJax.js").is_file()
    assert (site / "javascripts" / "mathjax" / "config" / "local" / "cove.js").is_file()
    assert (site / "javascripts" / "mathjax" / "fonts" / "HTML-CSS" / "STIX-Web").is_dir()
    notebook = (site / "notebooks" / "03_correspondence" / "index.html").read_text()
    assert '"../../javascripts/mathjax/MathJax.js?config=TeX-AMS-MML_HTMLorMML-full,local/cove"' in notebook
    hook = load_hook()
    for path in NOTEBOOKS:  # a notebook with a fresh executed copy (nbval's run writes them) shows outputs
        html = (site / "notebooks" / path.stem / "index.html").read_text()
        outputs = html.count('<div class="jp-OutputArea-child')
        assert outputs > 0 if hook.executed_copy(path) else outputs == 0, (path.name, outputs)
    for page in ("correspondence", "masking"):  # display maths inside list items
        html = (site / "method" / page / "index.html").read_text()
        assert html.count('<div class="arithmatex">') >= 2 and "<p>\\[" not in html, page
    assert "pipeline.svg" in (site / "method" / "index.html").read_text()
    assert (site / "method" / "pipeline.svg").is_file()


def run_notebooks_with_nbval(tmp_path, notebooks: dict) -> subprocess.CompletedProcess:
    """``pytest --nbval-lax`` on ``{name: cells}`` in a copy of the repository's notebook
    plumbing (``notebooks/conftest.py`` and the docs hook) under ``tmp_path``."""
    import nbformat

    (tmp_path / "notebooks").mkdir()
    (tmp_path / "docs" / "hooks").mkdir(parents=True)
    (tmp_path / "notebooks" / "conftest.py").write_text((ROOT / "notebooks" / "conftest.py").read_text())
    (tmp_path / "docs" / "hooks" / "cove_docs.py").write_text((ROOT / "docs" / "hooks" / "cove_docs.py").read_text())
    for name, cells in notebooks.items():
        nbformat.write(nbformat.v4.new_notebook(cells=cells), tmp_path / "notebooks" / name)
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--nbval-lax",
                           "--nbval-current-env", "--nbval-cell-timeout=300", "notebooks"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)


def test_nbval_runs_the_notebooks_and_leaves_copies_the_docs_publish(tmp_path):
    """nbval reports each code cell as a test and names the failing one; a notebook whose cells
    all passed is written with its outputs and its cells' hash (a panel's output as its static
    copy: picture + status line); a failing one leaves no copy; a changed one's copy is stale."""
    import nbformat
    from nbconvert import HTMLExporter

    new_code, new_md = nbformat.v4.new_code_cell, nbformat.v4.new_markdown_cell
    result = run_notebooks_with_nbval(tmp_path, {
        "00_x.ipynb": [new_md("# x"), new_code("import numpy as np\nfrom cove.app import widgets\nprint(6 * 7)"),
                       new_code("widgets.frame_viewer({'a': np.zeros((2, 8, 8, 3), np.uint8)})"),
                       new_code("6 * 7"), new_code("print('shown'); 6 * 7;")],
        "01_bad.ipynb": [new_code("x = 1"), new_code("assert x == 2, 'x is not 2'"), new_code("x")],
    })
    log = result.stdout + result.stderr
    assert result.returncode == 1 and "1 failed, 6 passed" in log, log[-3000:]
    assert "01_bad.ipynb::Cell 1" in log and "x is not 2" in log
    hook = load_hook()
    executed = tmp_path / "artifacts" / "notebooks"
    assert hook.executed_copy(tmp_path / "notebooks" / "01_bad.ipynb", executed) is None
    source = tmp_path / "notebooks" / "00_x.ipynb"
    out = hook.executed_copy(source, executed)
    assert out is not None
    ran = nbformat.read(out, as_version=4)
    nbformat.validate(ran)
    assert [c.execution_count for c in ran.cells[1:]] == [1, 2, 3, 4]
    assert ran.cells[1].outputs[0]["text"] == "42\n" and ran.cells[3].outputs[0]["data"]["text/plain"] == "42"
    assert [o["output_type"] for o in ran.cells[4].outputs] == ["stream"]  # ';' silences the result, as in Jupyter
    assert "widgets" not in ran.metadata
    html, _ = HTMLExporter(template_name="lab").from_notebook_node(ran)
    assert "data:image/png;base64," in html and "frame 0 of 1" in html
    nb = nbformat.read(source, as_version=4)
    nb.cells[1].source += "\nprint(1)"  # the source changed: the copy is stale
    nbformat.write(nb, source)
    assert hook.executed_copy(source, executed) is None


def test_write_executed_numbers_the_cells_that_ran(tmp_path):
    import nbformat

    hook = load_hook()
    source = tmp_path / "00_x.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1"), nbformat.v4.new_code_cell("2")]),
                   source)
    shown = {"output_type": "execute_result", "data": {"text/plain": "2"}, "metadata": {}, "execution_count": 7}
    nb = nbformat.read(source, as_version=4)
    out = hook.write_executed(nb, source.name, [None, [shown]], tmp_path / "executed")  # cell 0: NBVAL_SKIP
    ran = nbformat.read(out, as_version=4)
    assert [c.execution_count for c in ran.cells] == [None, 1] and ran.cells[1].outputs[0].execution_count == 1
    assert hook.executed_copy(source, tmp_path / "executed") == out
    with pytest.raises(ValueError, match="2 code cells"):
        hook.write_executed(nb, source.name, [[]], tmp_path / "executed")
    nb.cells.append(nbformat.v4.new_code_cell("3"))  # the notebook that ran is not the file any more
    hook.write_executed(nb, source.name, [[], [], []], tmp_path / "executed")
    assert hook.executed_copy(source, tmp_path / "executed") is None


def test_gpu_script_returns_what_the_device_can_send_back():
    """``benchmarks/gpu.sh`` parses, and writes at most the 8 files a lent device returns from
    ``$OUT`` (``cove bench profile -o X.json`` writes ``X.txt`` beside it), all named in its header."""
    import re
    import subprocess

    script = ROOT / "benchmarks" / "gpu.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    lines = script.read_text().splitlines()
    code = "\n".join(line for line in lines if not line.lstrip().startswith("#"))
    written = set(re.findall(r"\$OUT/([\w.-]+)", code))
    written |= {name[:-5] + ".txt" for name in written if name.startswith("profile") and name.endswith(".json")}
    header = "\n".join(line for line in lines if line.startswith("#"))
    assert 0 < len(written) <= 8, written
    assert all(name in header for name in written), written
