"""Preference pairs on the language: two completions sampled from pi_ref per prompt, labelled by the teacher.

Variants (the MuJoCo suite's, where they make sense on text):
- ``clean``: the Bradley-Terry teacher's labels (`Language.prefer_first`: gold reward + spurious bonus);
- ``noisy:p``: those labels, each flipped with probability p;
- ``mixed``: in half the pairs one side is the best of 4 pi_ref samples by gold reward (pairs of clearly
  different quality beside pairs of like quality), labelled by the same teacher;
- ``<variant>+shuffled``: the same pairs with their labels permuted across pairs (the label-shuffle control).
Every draw comes from (data seed, pi_ref seed): the same arguments give the same pairs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from evaluators.datasets import DatasetError, Variant, parse_variant
from evaluators.language.generator import Language
from evaluators.language.model import sample

LM_VARIANTS = ("clean", "noisy", "mixed")


def parse_lm_variant(text: str) -> Variant:
    choices = "choose one of clean, noisy:p, mixed (append +shuffled for the label-shuffle control)"
    name = text.strip().removesuffix("+shuffled").replace("-", ":", 1).partition(":")[0]
    if name not in LM_VARIANTS:
        raise DatasetError(f"variant {text!r} is not defined for the language task; {choices}")
    return parse_variant(text)


@dataclass
class Pairs:
    prompts: np.ndarray  # (n, prompt_length) word ids
    chosen: np.ndarray  # (n, completion_length)
    rejected: np.ndarray
    gold_chosen: np.ndarray
    gold_rejected: np.ndarray

    def __len__(self) -> int:
        return len(self.prompts)

    def to_dataset(self, language: Language):
        """The pairs in TRL's standard preference format (prompt / chosen / rejected text)."""
        from datasets import Dataset

        return Dataset.from_dict({"prompt": [language.text(p, trailing_space=True) for p in self.prompts],
                                  "chosen": [language.text(c) for c in self.chosen],
                                  "rejected": [language.text(r) for r in self.rejected]})

    def gold_agreement(self) -> float:
        """How often the chosen completion has the higher gold reward (ties count one half)."""
        d = self.gold_chosen - self.gold_rejected
        return float(np.mean(np.where(d > 0, 1.0, np.where(d == 0, 0.5, 0.0))))


def build_pairs(language: Language, reference, variant: str | Variant, n_pairs: int, data_seed: int,
                reference_seed: int) -> Pairs:
    v = parse_lm_variant(variant) if isinstance(variant, str) else variant
    rng = np.random.default_rng([data_seed, reference_seed, 31])
    prompts = language.prompts(rng, n_pairs)
    base = 1_000_003 * data_seed + 1_009 * reference_seed
    a = sample(reference, language, prompts, 1, seed=base + 1)
    b = sample(reference, language, prompts, 1, seed=base + 2)
    if v.name == "mixed":
        pool = sample(reference, language, prompts, 4, seed=base + 3).reshape(n_pairs, 4, -1)
        best = pool[np.arange(n_pairs), language.gold(np.repeat(prompts, 4, 0),
                                                     pool.reshape(4 * n_pairs, -1)).reshape(n_pairs, 4).argmax(1)]
        a = np.where((rng.random(n_pairs) < 0.5)[:, None], best, a)
    prefer_a = language.prefer_first(rng, prompts, a, b)
    if v.name == "noisy":
        prefer_a ^= rng.random(n_pairs) < v.param
    if v.shuffled:
        prefer_a = prefer_a[np.random.default_rng([data_seed, reference_seed, 4]).permutation(n_pairs)]
    chosen = np.where(prefer_a[:, None], a, b)
    rejected = np.where(prefer_a[:, None], b, a)
    return Pairs(prompts, chosen, rejected, language.gold(prompts, chosen), language.gold(prompts, rejected))


def best_of_n_pairs(language: Language, reference, n_pairs: int, n: int, data_seed: int, reference_seed: int) -> Pairs:
    """The ceiling's data: per prompt, the best (chosen) and worst (rejected) of ``n`` pi_ref samples by gold."""
    rng = np.random.default_rng([data_seed, reference_seed, 37])
    prompts = language.prompts(rng, n_pairs)
    pool = sample(reference, language, prompts, n, seed=1_000_003 * data_seed + 1_009 * reference_seed + 5)
    gold = language.gold(np.repeat(prompts, n, 0), pool).reshape(n_pairs, n)
    pool = pool.reshape(n_pairs, n, -1)
    rows = np.arange(n_pairs)
    hi, lo = gold.argmax(1), gold.argmin(1)
    return Pairs(prompts, pool[rows, hi], pool[rows, lo], gold[rows, hi], gold[rows, lo])
