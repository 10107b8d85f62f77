"""Structured pruning: pruned models equal zeroed ones, save / load, errors, FLOP ceiling."""

import json

import pytest
import torch

from neuronlens.errors import (
    DataFileNotFoundError,
    NeuronLensError,
    ShapeMismatchError,
    SiteError,
)
from neuronlens.interventions import Zero, intervene
from neuronlens.models import load_model
from neuronlens.models.tiny import tiny_hf_model, tiny_tokenizer
from neuronlens.neurons import NeuronSet
from neuronlens.prompts import evaluate
from neuronlens.pruning import (
    ModelDims,
    PruningRecord,
    flop_ceiling,
    flop_count,
    load_pruned,
    plain_hf_model,
    prune_model,
    save_pruned,
)
from tests.conftest import random_texts
from tests.probe_fixtures import fake_prompt, word_task

ATOL = 1e-5


def _model(family: str, seed: int = 1):
    return load_model(tiny_hf_model(family, seed=seed), tiny_tokenizer(), name=f"tiny-{family}")


def _batch(model):
    return model.encode(random_texts(4, seed=3))


def _logits(model, batch, prompt=None):
    with torch.no_grad():
        return model(batch, prompt=prompt)


def _random_keep(model, frac: float = 0.5, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        s.name: torch.randperm(s.width, generator=g)[: int(s.width * frac)] for s in model.sites
    }


def _zeroed(model, removed: NeuronSet, batch, prompt=None):
    with torch.no_grad(), intervene(model, Zero(removed)):
        return model(batch, prompt=prompt)


# ---------------------------------------------------------------------- equivalence
def test_pruned_equals_zeroed(family):
    model = _model(family)
    batch = _batch(model)
    prompt = 0.3 * torch.randn(2, model.d_model)
    before = _logits(model, batch)
    before_p = _logits(model, batch, prompt)
    keep = _random_keep(model)
    pruned = prune_model(model, keep)

    # the widths are the kept counts, read from the module shapes
    assert {s.name: s.width for s in pruned.sites} == {k: len(v) for k, v in keep.items()}
    assert pruned.name == model.name and pruned.kind == model.kind
    assert pruned.has_lm_head == model.has_lm_head
    rec = pruned.pruning
    assert rec.source_model == model.name
    assert rec.kept == {k: sorted(v.tolist()) for k, v in keep.items()}
    assert rec.kept_ratio == pytest.approx(0.5) and rec.removed_ratio == pytest.approx(0.5)

    removed = rec.removed_set()
    torch.testing.assert_close(
        _logits(pruned, batch), _zeroed(model, removed, batch), atol=ATOL, rtol=0
    )
    torch.testing.assert_close(
        _logits(pruned, batch, prompt), _zeroed(model, removed, batch, prompt), atol=ATOL, rtol=0
    )
    # the original is untouched and shares no storage with the pruned model
    assert model.pruning is None
    assert [s.width for s in model.sites] == [24] * len(model.sites)
    torch.testing.assert_close(_logits(model, batch), before, atol=0, rtol=0)
    torch.testing.assert_close(_logits(model, batch, prompt), before_p, atol=0, rtol=0)
    ptrs = {t.data_ptr() for t in model.hf_model.state_dict().values() if t.numel()}
    assert not ptrs & {t.data_ptr() for t in pruned.hf_model.state_dict().values() if t.numel()}
    # the config tells the (largest) new FFN width
    cfg = pruned.hf_model.config.to_dict()
    assert any(cfg.get(a) == 12 for a in ("intermediate_size", "d_ff", "n_inner"))


def test_prune_whole_site_leaves_output_bias(family):
    model = _model(family)
    batch = _batch(model)
    site = model.sites[-1]
    pruned = prune_model(model, {site.name: []})
    widths = {s.name: s.width for s in pruned.sites}
    assert widths[site.name] == 0 and sum(widths.values()) == model.n_neurons - site.width
    all_of_site = NeuronSet({site.name: torch.arange(site.width)}, {site.name: site.width})
    torch.testing.assert_close(
        _logits(pruned, batch), _zeroed(model, all_of_site, batch), atol=ATOL, rtol=0
    )
    # every site emptied: also runs
    empty = prune_model(model, {s.name: torch.zeros(0, dtype=torch.long) for s in model.sites})
    assert empty.n_neurons == 0 and empty.pruning.kept_ratio == 0.0
    everything = NeuronSet(
        {s.name: torch.arange(s.width) for s in model.sites}, {s.name: s.width for s in model.sites}
    )
    torch.testing.assert_close(
        _logits(empty, batch), _zeroed(model, everything, batch), atol=ATOL, rtol=0
    )


@pytest.mark.parametrize("how", ["keep_all", "remove_none", "keep_nothing_named"])
def test_prune_nothing_changes_nothing(tiny_bert, how):
    model = tiny_bert
    batch = _batch(model)
    sites = model.sites
    if how == "keep_all":
        spec = {
            "keep": NeuronSet(
                {s.name: torch.arange(s.width) for s in sites}, {s.name: s.width for s in sites}
            )
        }
    elif how == "remove_none":
        spec = {"remove": {s.name: [] for s in sites}}
    else:
        spec = {"keep": {}}
    pruned = prune_model(model, **spec)
    assert pruned.pruning.kept_ratio == 1.0 and pruned.pruning.removed_ratio == 0.0
    assert [s.width for s in pruned.sites] == [s.width for s in sites]
    torch.testing.assert_close(_logits(pruned, batch), _logits(model, batch), atol=0, rtol=0)


def test_keep_and_remove_forms_agree(tiny_bert):
    model = tiny_bert
    batch = _batch(model)
    keep = _random_keep(model, 0.25, seed=4)
    widths = {s.name: s.width for s in model.sites}
    removed = {
        k: torch.tensor(sorted(set(range(widths[k])) - set(v.tolist()))) for k, v in keep.items()
    }
    a = prune_model(model, NeuronSet(dict(keep), widths))
    b = prune_model(model, remove=NeuronSet(removed, widths))
    mask = {
        k: torch.zeros(widths[k], dtype=torch.bool).index_fill_(0, v, True) for k, v in keep.items()
    }
    c = prune_model(model, {("blocks", 0): mask["blocks.0"], 1: keep["blocks.1"].tolist()})
    assert a.pruning.kept == b.pruning.kept == c.pruning.kept
    for m in (b, c):
        torch.testing.assert_close(_logits(m, batch), _logits(a, batch), atol=0, rtol=0)
    # a NeuronSet site with no neurons listed loses them all (keep) / keeps them all (remove)
    only0 = NeuronSet({"blocks.0": keep["blocks.0"]}, widths)
    assert prune_model(model, only0).pruning.widths == {"blocks.0": 6, "blocks.1": 0}
    assert prune_model(model, remove=only0).pruning.widths == {"blocks.0": 18, "blocks.1": 24}


def test_pruning_twice_composes(family):
    if family not in ("bert", "gpt2", "t5-gated"):
        pytest.skip("composition is family-independent; three families suffice")
    model = _model(family)
    batch = _batch(model)
    first = prune_model(model, _random_keep(model, 0.5, seed=1))
    second = prune_model(first, _random_keep(first, 0.5, seed=2))
    rec = second.pruning
    assert rec.original_widths == {s.name: s.width for s in model.sites}
    assert rec.source_model == model.name
    assert rec.kept_ratio == pytest.approx(0.25)
    for name, kept in rec.kept.items():
        assert set(kept) <= set(first.pruning.kept[name])
    torch.testing.assert_close(
        _logits(second, batch), _zeroed(model, rec.removed_set(), batch), atol=ATOL, rtol=0
    )
    # a set of the unpruned model cannot index the pruned one
    with pytest.raises(ShapeMismatchError, match="pruned"):
        prune_model(first, rec.kept_set())


def test_pruned_model_works_with_prompts_and_interventions(tiny_bert):
    model = tiny_bert
    task = word_task()
    tuned = fake_prompt(model, task)
    keep = _random_keep(model, 0.5, seed=5)
    keep["blocks.1"] = torch.zeros(0, dtype=torch.long)
    pruned = prune_model(model, keep)
    dev = task.load("dev")
    zeroed = evaluate(
        model, tuned, dev, task=task, interventions=[Zero(pruned.pruning.removed_set())]
    )
    assert evaluate(pruned, tuned, dev, task=task).accuracy == zeroed.accuracy
    # neuron sets of the pruned model (also over its empty site) work on it
    site0 = pruned.sites[0]
    drop = NeuronSet({"blocks.0": torch.arange(2)}, {s.name: s.width for s in pruned.sites})
    batch = _batch(pruned)
    smaller = prune_model(pruned, remove=drop)
    torch.testing.assert_close(
        _logits(smaller, batch), _zeroed(pruned, drop, batch), atol=ATOL, rtol=0
    )
    assert site0.width == 12


def test_plain_hf_model_matches_raw_hf(tiny_pair):
    model, raw = tiny_pair
    plain = plain_hf_model(model)
    assert type(plain) is type(raw)
    for (k, a), (k2, b) in zip(plain.state_dict().items(), raw.state_dict().items(), strict=True):
        assert k == k2
        torch.testing.assert_close(a, b, atol=0, rtol=0)


# ---------------------------------------------------------------------- save / load
def test_save_load_round_trip(family, tmp_path):
    model = _model(family)
    batch = _batch(model)
    keep = _random_keep(model, 0.5, seed=7)
    keep[model.sites[0].name] = torch.zeros(0, dtype=torch.long)  # an empty site too
    pruned = prune_model(model, keep)
    out = save_pruned(pruned, tmp_path / "pruned")
    assert {"config.json", "model.safetensors", "pruning.json"} <= {p.name for p in out.iterdir()}
    back = load_pruned(out)
    assert back.pruning == pruned.pruning
    assert back.name == pruned.name and back.kind == pruned.kind
    assert [s.width for s in back.sites] == [s.width for s in pruned.sites]
    torch.testing.assert_close(_logits(back, batch), _logits(pruned, batch), atol=ATOL, rtol=0)


def test_save_unpruned_model(tiny_bert, tmp_path):
    back = load_pruned(save_pruned(tiny_bert, tmp_path / "full"), name="again")
    assert back.name == "again" and back.pruning.kept_ratio == 1.0
    batch = _batch(tiny_bert)
    torch.testing.assert_close(_logits(back, batch), _logits(tiny_bert, batch), atol=0, rtol=0)


@pytest.fixture
def saved(tiny_bert, tmp_path):
    pruned = prune_model(tiny_bert, _random_keep(tiny_bert, 0.5))
    return save_pruned(pruned, tmp_path / "saved")


def _edit_record(path, fn):
    f = path / "pruning.json"
    meta = json.loads(f.read_text())
    fn(meta)
    f.write_text(json.dumps(meta))


def test_load_missing_files(saved, tmp_path):
    with pytest.raises(DataFileNotFoundError):
        load_pruned(tmp_path / "nowhere")
    (saved / "model.safetensors").unlink()
    with pytest.raises(DataFileNotFoundError, match="model.safetensors"):
        load_pruned(saved)


def test_load_missing_record(saved):
    (saved / "pruning.json").unlink()
    with pytest.raises(DataFileNotFoundError, match="pruning.json"):
        load_pruned(saved)


def test_load_corrupted_record(saved):
    (saved / "pruning.json").write_text("{not json")
    with pytest.raises(NeuronLensError, match="JSON"):
        load_pruned(saved)
    (saved / "pruning.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(NeuronLensError, match="save_pruned"):
        load_pruned(saved)


def test_load_record_that_does_not_match(saved):
    original = (saved / "pruning.json").read_text()

    def drop_key(meta):
        del meta["record"]["original_widths"]

    _edit_record(saved, drop_key)
    with pytest.raises(NeuronLensError, match="record"):
        load_pruned(saved)

    (saved / "pruning.json").write_text(original)

    def out_of_range(meta):
        meta["record"]["kept"]["blocks.0"][-1] = 99

    _edit_record(saved, out_of_range)
    with pytest.raises(ShapeMismatchError):
        load_pruned(saved)

    (saved / "pruning.json").write_text(original)

    def wider(meta):  # record and widths agree with each other, not with the weights
        meta["record"]["kept"]["blocks.0"].append(23)
        meta["record"]["kept"]["blocks.0"] = sorted(set(meta["record"]["kept"]["blocks.0"]))
        meta["sites"][0][2] = len(meta["record"]["kept"]["blocks.0"])

    _edit_record(saved, wider)
    with pytest.raises(ShapeMismatchError, match="shape"):
        load_pruned(saved)


def test_load_corrupted_weights(saved):
    (saved / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(NeuronLensError, match="model.safetensors is not the file save_pruned"):
        load_pruned(saved)

    def version_1(meta):  # no list of files: the weights are only found unreadable
        meta["format_version"] = 1
        del meta["files"]

    _edit_record(saved, version_1)
    with pytest.raises(NeuronLensError, match="cannot be read"):
        load_pruned(saved)


# ---------------------------------------------------------------------- bad input
def test_bad_input(tiny_bert):
    model = tiny_bert
    with pytest.raises(SiteError):
        prune_model(model, {"blocks.7": [0]})
    with pytest.raises(SiteError):
        prune_model(model, {"decoder_blocks.0": [0]})
    with pytest.raises(ShapeMismatchError, match="out of range"):
        prune_model(model, {"blocks.0": [0, 24]})
    with pytest.raises(ShapeMismatchError, match="out of range"):
        prune_model(model, remove={"blocks.0": torch.tensor([-1])})
    with pytest.raises(NeuronLensError, match="NeuronSet or a mapping"):
        prune_model(model, [0, 1, 2])
    with pytest.raises(NeuronLensError, match="NeuronSet or a mapping"):
        prune_model(model, "blocks.0")
    with pytest.raises(NeuronLensError, match="integers"):
        prune_model(model, {"blocks.0": torch.tensor([0.0, 1.0])})
    with pytest.raises(NeuronLensError, match="integers"):
        prune_model(model, {"blocks.0": ["a"]})
    with pytest.raises(NeuronLensError, match="must be a tensor"):
        prune_model(model, {"blocks.0": 3})
    with pytest.raises(ShapeMismatchError, match="1-D"):
        prune_model(model, {"blocks.0": torch.zeros(2, 2, dtype=torch.long)})
    with pytest.raises(ShapeMismatchError, match="bool mask"):
        prune_model(model, {"blocks.0": torch.ones(3, dtype=torch.bool)})
    with pytest.raises(NeuronLensError, match="exactly one"):
        prune_model(model)
    with pytest.raises(NeuronLensError, match="exactly one"):
        prune_model(model, {}, remove={})
    with pytest.raises(ShapeMismatchError):
        prune_model(model, NeuronSet({"blocks.0": torch.arange(3)}, {"blocks.0": 30}))
    with pytest.raises(SiteError):
        prune_model(model, NeuronSet({"blocks.9": torch.arange(3)}, {"blocks.9": 24}))
    assert model.pruning is None


def test_record_round_trip_and_sets():
    rec = PruningRecord({"a.0": [3, 1, 1], "a.1": []}, {"a.0": 4, "a.1": 2}, "m")
    assert rec.kept == {"a.0": [1, 3], "a.1": []}
    assert rec.kept_ratio == pytest.approx(2 / 6) and rec.removed_ratio == pytest.approx(4 / 6)
    assert rec.removed() == {"a.0": [0, 2], "a.1": [0, 1]}
    assert rec.removed_set().count == 4 and rec.kept_set().count == 2
    assert PruningRecord.from_dict(json.loads(json.dumps(rec.to_dict()))) == rec
    with pytest.raises(ShapeMismatchError):
        PruningRecord({"a.0": [4]}, {"a.0": 4}, "m")
    with pytest.raises(NeuronLensError):
        PruningRecord({"a.0": [0]}, {"a.0": 4, "a.1": 2}, "m")
    with pytest.raises(NeuronLensError):
        PruningRecord.from_dict({"kept": {}})


# ---------------------------------------------------------------------- FLOP ceiling
def test_flop_ceiling_bert_base():
    bert_base = ModelDims.uniform(768, 3072, 12)
    for removed, expected in ((0.3, 1.24), (0.5, 1.48), (0.7, 1.83)):
        assert flop_ceiling(bert_base, 1 - removed, 128) == pytest.approx(expected, abs=0.02)
    assert flop_ceiling(bert_base, 1.0, 128) == 1.0
    ratios = [flop_ceiling(bert_base, k / 10, 128) for k in range(11)]
    assert ratios == sorted(ratios, reverse=True)
    # longer sequences: attention scores weigh more, the ceiling drops
    assert flop_ceiling(bert_base, 0.5, 512) < flop_ceiling(bert_base, 0.5, 128)
    # counting the LM head over every position dilutes the FFN share
    assert flop_ceiling(
        ModelDims.uniform(768, 3072, 12, vocab_size=30522), 0.5, 128, lm_head=True
    ) < flop_ceiling(bert_base, 0.5, 128)
    c = flop_count(bert_base, 128)
    assert c.ffn == pytest.approx(2 * 128 * 12 * 2 * 768 * 3072)
    assert c.attention == pytest.approx(2 * 128 * 12 * 4 * 768**2)
    assert c.scores == pytest.approx(2 * 128 * 12 * 2 * 128 * 768)
    # the output projections' inputs at half: a quarter of the attention projections go
    half_o = flop_count(bert_base, 128, attn_out_kept_ratio=0.5)
    assert half_o.attention == pytest.approx(2 * 128 * 12 * 3.5 * 768**2)
    assert half_o.ffn == c.ffn and half_o.scores == c.scores
    assert flop_ceiling(bert_base, 1.0, 128, attn_out_kept_ratio=0.5) == pytest.approx(
        c.total / half_o.total
    )
    with pytest.raises(NeuronLensError):
        flop_ceiling(bert_base, 1.5, 128)
    with pytest.raises(NeuronLensError, match="attn_out_kept_ratio"):
        flop_count(bert_base, 128, attn_out_kept_ratio=-0.1)
    with pytest.raises(NeuronLensError):
        flop_count("bert", 128)


def test_flop_ceiling_from_models(tiny_bert):
    dims = ModelDims.of(tiny_bert)
    assert dims == ModelDims.uniform(16, 24, 2, attn_dim=16, kv_dim=16, vocab_size=64)
    assert flop_ceiling(tiny_bert, 0.5, 32) == flop_ceiling(dims, 0.5, 32)
    pruned = prune_model(tiny_bert, _random_keep(tiny_bert, 0.5))
    assert ModelDims.of(pruned) == dims  # a pruned model counts against its original widths
    assert flop_ceiling(pruned, pruned.pruning.kept_ratio, 32) == flop_ceiling(dims, 0.5, 32)
    gated = _model("t5-gated")
    g = ModelDims.of(gated)
    assert g.gated and len(g.ffn_widths) == len(g.decoder_ffn_widths) == 2
    assert 1.0 < flop_ceiling(gated, 0.5, 16) < 2.0
    llama = ModelDims.of(_model("llama"))
    assert llama.gated and llama.kv_dim == 8 and llama.attn_dim == 16


# ---------------------------------------------------------------------------- searches


def test_skip_search_finds_the_planted_neuron_ratio():
    from neuronlens.pruning import skip_search

    from .probe_fixtures import planted_model, planted_probe, word_task

    model, task = planted_model(), word_task(n=80)
    probe = planted_probe(model, task)
    dev = word_task(n=400, seed=3).load("train")  # a larger eval set: the subset is < 10 %
    res = skip_search(
        model,
        probe,
        task,
        train=task.load("train"),
        eval_data=dev,
        psi=1.0,
        step=0.01,
        eval_fraction=0.08,
        progress=False,
    )
    # 24 neurons: keeping 4 % or less keeps none; 5 % keeps exactly the planted neuron 7
    assert res.kept_ratio == pytest.approx(0.05)
    assert res.model.pruning.kept["blocks.0"] == [7]
    assert res.accuracy >= res.base_accuracy - 0.01
    assert [s.accepted for s in res.history][-1] in (True, False)
    assert any(not s.accepted for s in res.history)
    assert res.model.sites[0].width == 1


def test_skeleton_search_retrains_and_compares_methods():
    from neuronlens.pruning import skeleton_search

    from .probe_fixtures import planted_model, planted_probe, word_task

    model, task = planted_model(), word_task(n=80)
    probe = planted_probe(model, task)
    dev = task.load("dev")
    res = skeleton_search(
        model,
        probe,
        task,
        train=task.load("train"),
        eval_data=dev,
        psi=1.0,
        retrain={"max_steps": 5, "head_lr": 1e-3},
        progress=False,
    )
    assert res.kept_ratio == pytest.approx(0.05)
    assert res.method == "attribution" and res.removed_ratio == pytest.approx(0.95)
    assert 3 <= len(res.history) <= 5  # binary search over 21 ratios
    rnd = skeleton_search(
        model,
        probe,
        task,
        train=task.load("train"),
        eval_data=dev,
        psi=1.0,
        method="random",
        retrain={"max_steps": 2},
        progress=False,
    )
    assert rnd.kept_ratio >= res.kept_ratio
    assert rnd.scores.method == "random"
    fig = res.figure()
    xs = list(fig.data[0].x)
    assert xs == sorted(xs, reverse=True) and xs[-1] > 1.0  # by kept ratio: ceilings fall
    assert len(xs) == len(res.history)
