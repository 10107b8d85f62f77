"""A tiny model with tuned-looking prompts and a binary word task, shared by probe tests."""

import torch

import neuronlens as nl
from neuronlens.models.tiny import tiny_hf_model, tiny_tokenizer
from neuronlens.prompts import (
    LinearHead,
    PromptResult,
    Verbalizer,
    class_logits,
    encode_task,
    init_prompt,
)
from neuronlens.tasks import Task


def word_task(n: int = 40, seed: int = 0, name: str = "wtask") -> Task:
    """Label 1 iff the text contains w1 (else w2), among random filler words."""
    g = torch.Generator().manual_seed(seed)

    def make(k):
        texts, labels = [], []
        for _ in range(k):
            y = int(torch.randint(2, (1,), generator=g))
            words = [
                f"w{int(i)}"
                for i in torch.randint(
                    20, 50, (int(torch.randint(2, 7, (1,), generator=g)),), generator=g
                )
            ]
            words.insert(int(torch.randint(len(words) + 1, (1,), generator=g)), "w1" if y else "w2")
            texts.append(" ".join(words))
            labels.append(y)
        return texts, labels

    return Task.from_lists(
        name,
        label_names=("neg", "pos"),
        template="{text} w3 {mask} .",
        verbalizer=("w10", "w11"),
        splits={"train": make(n), "dev": make(n // 2 + 3)},
        label_space="w2",
    )


def tiny(family: str = "bert", seed: int = 3):
    return nl.load_model(tiny_hf_model(family, seed=seed), tiny_tokenizer(), name=f"tiny-{family}")


def fake_prompt(
    model, task, *, n_tokens: int = 3, seed: int = 0, head: str = "verbalizer"
) -> PromptResult:
    """A prompt as tune_prompt would return it, without training (random init)."""
    torch.manual_seed(seed)
    hd = (
        Verbalizer(model, task.verbalizer) if head == "verbalizer" else LinearHead(model.d_model, 2)
    )
    hd.requires_grad_(False)
    return PromptResult(
        prompt=init_prompt(model, n_tokens, seed=seed) + 0.5 * torch.randn(n_tokens, model.d_model),
        head=hd,
        task=task.name,
        label_space=task.label_space,
        label_names=task.label_names,
        seed=seed,
        model_name=model.name,
        model_kind=model.kind.value,
    )


def planted_model():
    """A 1-layer BERT where neuron 7 fires on token w1 and alone carries the label."""
    hf = tiny_hf_model("bert", layers=1, seed=5)
    tok = tiny_tokenizer()
    w1 = tok.convert_tokens_to_ids("w1")
    with torch.no_grad():
        emb = hf.bert.embeddings.word_embeddings.weight
        emb[w1].zero_()
        emb[w1, 0] = 8.0
        layer = hf.bert.encoder.layer[0]
        layer.attention.output.dense.weight.zero_()
        layer.attention.output.dense.bias.zero_()
        layer.intermediate.dense.weight[7].zero_()
        layer.intermediate.dense.weight[7, 0] = 3.0
        layer.intermediate.dense.bias[7] = -6.0
        layer.output.dense.weight[:, 7].zero_()
        layer.output.dense.weight[1, 7] = 3.0  # writes the label direction ...
        layer.output.dense.weight[0, 7] = -0.7  # ... and erases the token's own trace
    return nl.load_model(hf, tok, name="planted")


def planted_probe(model, task):
    """A hand-set linear head reading only the planted neuron's label direction."""
    probe = fake_prompt(model, task, n_tokens=0, head="linear")
    # the head reads only the label direction (dim 1), thresholded between the class means
    lin = probe.head.linear
    with torch.no_grad():
        lin.weight.zero_()
        lin.bias.zero_()
        lin.weight[1, 1] = 1.0
        train = task.load("train")
        x1 = class_logits(model, probe.head, None, encode_task(model, probe.head, task, train))[
            :, 1
        ]
        y = torch.tensor(train.labels)
        threshold = (x1[y == 1].mean() + x1[y == 0].mean()) / 2
        lin.weight[1, 1] = 10.0
        lin.bias[1] = -10.0 * threshold
    return probe


def probe_env():
    """``(model, task, prompt, train, dev, skill)``: a tiny BERT, the word task, an untrained
    prompt and its predictivity, for tests of what public calls refuse."""
    model, task = tiny(), word_task()
    pr = fake_prompt(model, task)
    train, dev = task.load("train"), task.load("dev")
    skill = nl.predictivity(model, pr, task, dev, train=train, progress=False)
    return model, task, pr, train, dev, skill
