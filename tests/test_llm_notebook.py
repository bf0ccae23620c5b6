"""notebooks/llm_quickstart.ipynb executes top to bottom on the tiny default (outputs stripped in git)."""

from __future__ import annotations

from pathlib import Path

NOTEBOOK = Path(__file__).parent.parent / "notebooks" / "llm_quickstart.ipynb"


def test_llm_notebook_executes(tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the kernel is a fresh process: one thread suits the tiny model
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "strip the notebook's outputs before committing"
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    assert "llm tiny-lm text-contains" in text and "eval reward by round:" in text
    assert text.count("'") >= 8  # four responses printed by the reloaded adapter
