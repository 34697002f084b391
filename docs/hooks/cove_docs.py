"""MkDocs hook for the cove docs (registered in ``mkdocs.yml`` under ``hooks:``).

1. ``on_files``: publishes the notebooks of ``notebooks/`` (outside ``docs/``) as pages at
   ``notebooks/<name>.ipynb``, so mkdocs-jupyter renders them (``execute: false``) without a
   copy or a symlink in ``docs/``. Where an executed copy of a notebook with the same cells
   exists in ``artifacts/notebooks/``, that copy is published instead, so the page shows the
   outputs. The test run writes those copies: nbval runs the notebooks and
   ``notebooks/conftest.py`` writes each one whose cells all passed, with the outputs nbval
   kept (:func:`write_executed`); one notebook: ``python -m pytest notebooks/00_quickstart.ipynb``.
   Widgets are saved without their state: a page shows each panel's static copy (pictures and
   status line).
2. ``on_page_markdown``:
   - ``<!-- cove:api cove.module -->`` becomes ``::: cove.module`` (mkdocstrings) when the
     module exists in the checkout, and a note saying it is missing otherwise;
   - ``<!-- cove:benchmarks -->`` becomes tables (and figures) generated from
     ``docs/quality.json`` and ``docs/benchmarks*.json`` as written by the benchmark scripts,
     or a note saying that they have not been run yet; ``<!-- cove:benchmarks NAME.json -->``
     draws that one file in its place (and the plain marker leaves it out).

The rendering functions are pure (JSON in, Markdown out) and unit-tested in ``tests/test_docs.py``.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

try:
    from mkdocs.plugins import event_priority
except ImportError:  # the notebooks' test plugin uses the notebook helpers without mkdocs
    def event_priority(priority):
        return lambda function: function

ROOT = Path(__file__).resolve().parents[2]
EXECUTED = ROOT / "artifacts" / "notebooks"  # executed copies (git-ignored)
MATHJAX_DIR = "javascripts/mathjax"  # MathJax 2 files copied into the site by on_post_build
MATHJAX_PARTS = ("MathJax.js", "config", "extensions", "fonts", "jax")
# fonts shipped by jupyter-server-mathjax: STIX-Web only
MATHJAX_LOCAL_CONFIG = """MathJax.Hub.Config({
  "HTML-CSS": {availableFonts: [], preferredFont: null, webFont: "STIX-Web", imageFont: null},
  messageStyle: "none"
});
MathJax.Ajax.loadComplete("[MathJax]/config/local/cove.js");
"""
API_MARK = re.compile(r"<!--\s*cove:api\s+([\w.]+)\s*-->")
BENCH_MARK = "<!-- cove:benchmarks -->"
BENCH_FILE_MARK = re.compile(r"<!--\s*cove:benchmarks\s+([\w.-]+\.json)\s*-->")
MAX_ROWS = 12  # longer lists are cut (the raw JSON is linked)
MAX_CELL = 80  # characters per table cell


# -- notebooks ------------------------------------------------------------------------------


def source_sha(nb: dict) -> str:
    """Hash of a notebook's cells (type and source; the JSON or an ``nbformat`` node): an
    executed copy matches its source."""
    import hashlib

    cells = [(c["cell_type"], "".join(c["source"])) for c in nb["cells"]]
    return hashlib.sha256(json.dumps(cells).encode()).hexdigest()[:16]


def executed_copy(path: Path, executed: Path = EXECUTED) -> Path | None:
    """The executed copy of notebook ``path`` in ``executed``, if its cells are the same."""
    copy = executed / path.name
    if not copy.is_file():
        return None
    try:
        nb = json.loads(copy.read_text())
        fresh = nb.get("metadata", {}).get("cove", {}).get("source_sha") == source_sha(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError):
        return None
    return copy if fresh else None


def write_executed(nb, name: str, outputs: list, executed: Path = EXECUTED) -> Path:
    """Write notebook ``nb`` (an ``nbformat`` node, as the run read it) with the outputs of that
    run to ``executed/name``: ``outputs[i]`` is the list of output dicts of its ``i``-th code cell
    (as nbval keeps them, ``IPyNbCell.test_outputs``) or ``None`` for a cell that did not run.
    Execution counts follow the cells that ran; the hash of the cells that ran goes to
    ``metadata.cove`` (a notebook edited since is then stale), widget state is left out."""
    import nbformat

    code = [c for c in nb.cells if c.cell_type == "code"]
    if len(outputs) != len(code):
        raise ValueError(f"{name} has {len(code)} code cells, got outputs for {len(outputs)}")
    count = 0
    for cell, outs in zip(code, outputs):
        count += outs is not None
        cell.execution_count = count if outs is not None else None
        cell.outputs = [nbformat.from_dict(dict(o)) for o in outs or []]
        for o in cell.outputs:
            if o.output_type == "execute_result":
                o.execution_count = count
    nb.metadata.pop("widgets", None)
    nb.metadata["cove"] = {"source_sha": source_sha(nb)}
    executed.mkdir(parents=True, exist_ok=True)
    out = executed / name
    nbformat.write(nb, out)
    return out


@event_priority(100)  # before mkdocs-jupyter turns .ipynb files into pages
def on_files(files, config):
    from mkdocs.structure.files import File

    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        src = f"notebooks/{path.name}"
        if files.get_file_from_path(src) is None:
            copy = executed_copy(path)
            base = copy.parent.parent if copy is not None else ROOT  # <base>/notebooks/<name>
            files.append(File(src, str(base), config["site_dir"], config["use_directory_urls"]))
    return files


def mathjax_source() -> Path:
    """The MathJax 2 folder shipped by jupyter-server-mathjax (the ``docs`` extra)."""
    try:
        import jupyter_server_mathjax
    except ImportError as exc:
        raise RuntimeError("the docs need jupyter-server-mathjax (pip install -e '.[docs]')") from exc
    return Path(jupyter_server_mathjax.__file__).parent / "static"


def on_post_build(config):
    import shutil

    source, target = mathjax_source(), Path(config["site_dir"]) / MATHJAX_DIR
    for part in MATHJAX_PARTS:
        if (source / part).is_dir():
            shutil.copytree(source / part, target / part, dirs_exist_ok=True)
        else:
            target.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source / part, target / part)
    (target / "config" / "local").mkdir(parents=True, exist_ok=True)
    (target / "config" / "local" / "cove.js").write_text(MATHJAX_LOCAL_CONFIG)


# -- API pages -------------------------------------------------------------------------------


def module_exists(name: str, root: Path = ROOT) -> bool:
    """Whether ``cove.x.y`` exists as ``cove/x/y.py`` or ``cove/x/y/__init__.py`` under root."""
    path = root.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def api_block(name: str, root: Path = ROOT) -> str:
    if module_exists(name, root):
        return f"::: {name}"
    return (
        f'!!! warning "`{name}` is not in this checkout"\n'
        f"    The module has not been written yet; this page fills itself once it exists.\n"
    )


# -- benchmarks ------------------------------------------------------------------------------


def fmt(value) -> str:
    """One table cell: floats to 4 significant digits, a missing value (``None``) as a dash,
    everything else as text."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)) and all(not isinstance(v, (dict, list)) for v in value):
        return ", ".join(fmt(v) for v in value)
    if isinstance(value, (dict, list)):
        return f"`{json.dumps(value)[:80]}`"
    text = str(value).replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= MAX_CELL else text[: MAX_CELL - 1] + "…"


def _is_scalar(value) -> bool:
    return not isinstance(value, (dict, list)) or (
        isinstance(value, list) and all(not isinstance(v, (dict, list)) for v in value)
    )


def table(rows: list[dict], first: str | None = None) -> str:
    """Markdown table from a list of flat dicts; columns in first-seen order; at most
    ``MAX_ROWS`` rows, then a line saying how many were left out."""
    more = len(rows) - MAX_ROWS
    rows = rows[:MAX_ROWS]
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    if first is not None:
        columns = [first] + [c for c in columns if c != first]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(row.get(c, "")) for c in columns) + " |" for row in rows]
    if more > 0:
        lines.append(f"\n*… {more} more rows in the raw JSON.*")
    return "\n".join(lines)


def _records(data, prefix: str = ""):
    """``{"a": {"b": {flat dict}}}`` -> ``[("a.b", flat dict)]``; ``None`` if not that shape."""
    if not isinstance(data, dict) or not data:
        return None
    if all(_is_scalar(v) for v in data.values()):
        return [(prefix, data)] if prefix else None
    out = []
    for key, value in data.items():
        inner = _records(value, f"{prefix}.{key}" if prefix else str(key))
        if inner is None:
            return None
        out += inner
    return out


def flatten(record: dict, prefix: str = "") -> dict:
    """``{"a": {"b": 1}, "c": 2}`` -> ``{"a.b": 1, "c": 2}`` (lists of scalars kept as they are)."""
    out = {}
    for key, value in record.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            out.update(flatten(value, name))
        else:
            out[name] = value
    return out


def render_json(data, level: int = 3) -> str:
    """Markdown for one JSON document of unknown schema, best effort but never failing.

    - a dict of scalars -> a two-column table;
    - a list of dicts -> one table, one row per item (nested dicts as dotted columns);
    - nested dicts ending in flat dicts -> one table, one row per dotted path;
    - any other dict -> its scalars as a table, then a subsection per other key;
    - anything else -> a (shortened) JSON block.
    """
    if isinstance(data, dict) and data and all(_is_scalar(v) for v in data.values()):
        return table([{"name": k, "value": v} for k, v in data.items()])
    if isinstance(data, list) and data and all(isinstance(r, dict) for r in data):
        return table([flatten(r) for r in data])
    records = _records(data)
    if records is not None:  # nested dicts of flat dicts: one table, dotted row names
        return table([{"": name, **row} for name, row in records], first="")
    if isinstance(data, dict) and data:
        parts = []
        scalars = {k: v for k, v in data.items() if _is_scalar(v)}
        if scalars:
            parts.append(render_json(scalars, level))
        for key, value in data.items():
            if key not in scalars:
                parts.append(f"{'#' * min(level, 6)} {key}\n\n{render_json(value, level + 1)}")
        return "\n\n".join(parts)
    lines = json.dumps(data, indent=2).splitlines()
    cut = "\n..." if len(lines) > 40 else ""
    return "```json\n" + "\n".join(lines[:40]) + cut + "\n```"


def bar_plot(rows: list[dict], label: str, value: str, width: int = 420) -> str:
    """An inline SVG horizontal bar chart of ``row[value]`` per ``row[label]`` (numbers only)."""
    bars = [(fmt(r.get(label)), r[value]) for r in rows
            if isinstance(r.get(value), (int, float)) and not isinstance(r.get(value), bool)]
    if not bars:
        return ""
    top = max(v for _, v in bars) or 1.0
    h, left = 22, 170
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 70}" '
             f'height="{h * len(bars) + 24}" font-size="12" font-family="sans-serif">']
    for i, (name, v) in enumerate(bars):
        y, w = i * h + 4, max(1.0, width * v / top)
        parts.append(f'<text x="{left - 6}" y="{y + 14}" text-anchor="end">{name[:26]}</text>'
                     f'<rect x="{left}" y="{y}" width="{w:.1f}" height="{h - 6}" fill="#5b8def"/>'
                     f'<text x="{left + w + 4:.1f}" y="{y + 14}">{fmt(float(v))}</text>')
    parts.append(f'<text x="{left}" y="{h * len(bars) + 20}">{value}</text></svg>')
    return "".join(parts)


def sections_markdown(data: dict, level: int = 3) -> str:
    """``{"machine": {...}, "sections": {name: {"note", "rows", "plot": [label, value]}}}``
    (``cove bench speed``, ``cove bench paper``): per section its title (or name), note, a
    table and a bar plot."""
    parts = [render_json({"machine": data.get("machine", {})}, level)]
    for name, sec in data["sections"].items():
        rows = [flatten(r) for r in sec.get("rows", [])]
        body = [f"{'#' * level} {sec.get('title', name)}", sec.get("note", "")]
        if rows:
            body.append(table(rows))
        plot = sec.get("plot")
        if rows and isinstance(plot, list) and len(plot) == 2:
            body.append(bar_plot(rows, *plot))
        parts.append("\n\n".join(b for b in body if b))
    return "\n\n".join(parts)


def json_markdown(path: Path, heading: bool = True) -> str:
    """One benchmark JSON file as a section (under a heading naming it): its tables, or a note
    that it cannot be read."""
    try:
        data = json.loads(path.read_text())
        if isinstance(data, dict) and isinstance(data.get("gates"), dict):  # the verdict first
            data = {"gates": data["gates"], **{k: v for k, v in data.items() if k != "gates"}}
        if isinstance(data, dict) and isinstance(data.get("sections"), dict):
            body = sections_markdown(data)
        else:
            body = render_json(data)
    except (OSError, ValueError) as exc:
        body = f'!!! failure "Could not read `{path.name}`"\n    {exc}\n'
    title = f"## `{path.name}`\n\n" if heading else ""
    return f"{title}{body}\n\n[raw JSON]({path.name})"


def benchmarks_markdown(docs_dir: Path, exclude=()) -> str:
    """The generated part of the benchmarks page: one section per JSON file and figure
    (``exclude``: file names drawn elsewhere on the page)."""
    sources = [p for p in [docs_dir / "quality.json"] if p.is_file()]
    sources += sorted(docs_dir.glob("benchmarks*.json"))
    sources = [p for p in sources if p.name not in exclude]
    figures = sorted(
        p for p in docs_dir.iterdir() if p.suffix in (".png", ".svg") and p.stem.startswith(("quality", "benchmarks"))
    ) if docs_dir.is_dir() else []  # fmt: skip
    if not sources and not figures:
        return (
            '!!! note "No benchmark results in this build"\n'
            "    `docs/quality.json` and `docs/benchmarks*.json` are absent: the benchmark "
            "scripts have not been run in this checkout. Run them (see below) and rebuild.\n"
        )
    parts = [json_markdown(path) for path in sources]
    for path in figures:
        parts.append(f"![{path.stem}]({path.name})")
    return "\n\n".join(parts)


def one_benchmark_markdown(docs_dir: Path, name: str) -> str:
    """``docs/<name>`` drawn in place, or a note that it has not been measured in this checkout."""
    path = docs_dir / name
    if not path.is_file():
        return (f'!!! note "`{name}` is not in this checkout"\n'
                "    The benchmark that writes it has not been run; this section fills itself once it has.\n")
    return json_markdown(path, heading=False)


def on_page_markdown(markdown, page, config, files):
    markdown = API_MARK.sub(lambda m: api_block(m.group(1)), markdown)
    docs_dir = Path(config["docs_dir"])
    named = BENCH_FILE_MARK.findall(markdown)
    markdown = BENCH_FILE_MARK.sub(lambda m: one_benchmark_markdown(docs_dir, m.group(1)), markdown)
    if BENCH_MARK in markdown:
        markdown = markdown.replace(BENCH_MARK, benchmarks_markdown(docs_dir, exclude=named))
    return markdown
