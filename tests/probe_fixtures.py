"""A tiny model with tuned-looking prompts and a binary word task, shared by probe tests."""

import torch

import neuronlens as nl
from neuronlens.models.tiny import tiny_hf_model, tiny_tokenizer
from neuronlens.prompts import LinearHead, PromptResult, Verbalizer, init_prompt
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
