"""The generated language, its gold reward and the label teacher: everything hidden that the suite judges by.

The language is a first-order Markov chain over ``words`` words whose transition rows are Dirichlet
draws (most mass on a few successors), so a prompt constrains its completion and a small model can learn
it. Prompts and completions are word sequences of fixed lengths; a completion is judged by

    gold(x, y)  = sum_t value[y_t]  -  fluency_penalty * #{t : P(y_t | y_(t-1)) < rare}

``value`` is anti-correlated with how often the language uses a word (rare words are worth more), so the
reward pulls away from what is likely; the fluency term charges for every transition the language (almost)
never makes, so a policy that chases value by leaving the language loses. Labels come from a
Bradley-Terry teacher on ``gold + spurious_bonus * #spurious words``: the spurious words are worth nothing
to the gold reward, so a loss that follows the labels too literally spends its KL budget on them.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

SPECIAL_TOKENS = ("<pad>", "<eos>", "<unk>")
PAD, EOS, UNK = range(len(SPECIAL_TOKENS))
FIRST_WORD = len(SPECIAL_TOKENS)  # token id of word 0


@dataclass(frozen=True)
class LanguageConfig:
    words: int = 32
    prompt_length: int = 8
    completion_length: int = 12
    concentration: float = 0.3  # Dirichlet concentration of each transition row
    rare: float = 0.01  # a transition the language makes with less probability than this leaves the language
    fluency_penalty: float = 1.0
    spurious_words: int = 3
    spurious_bonus: float = 0.5  # what the teacher (not the gold reward) adds per spurious word
    teacher_temperature: float = 1.0
    seed: int = 0  # the language, its values and its spurious words

    def validate(self):
        if self.words < 4 or self.prompt_length < 1 or self.completion_length < 1:
            raise ValueError("a language needs >= 4 words and prompts and completions of >= 1 word")
        if not 0 <= self.spurious_words < self.words:
            raise ValueError(f"spurious_words must be in [0, {self.words}), got {self.spurious_words}")
        if self.teacher_temperature <= 0 or self.concentration <= 0:
            raise ValueError("teacher_temperature and concentration must be > 0")


class Language:
    """The generator, the gold reward and the teacher's reward of one ``LanguageConfig``."""

    def __init__(self, cfg: LanguageConfig = LanguageConfig()):
        cfg.validate()
        self.cfg = cfg
        rng = np.random.default_rng([cfg.seed, 17])
        self.transitions = rng.dirichlet(np.full(cfg.words, cfg.concentration), size=cfg.words)
        self.start = np.full(cfg.words, 1.0 / cfg.words)
        frequency = self.stationary
        surprise = -np.log(frequency)
        surprise = (surprise - surprise.mean()) / surprise.std()
        self.value = 0.6 * surprise + 0.8 * rng.standard_normal(cfg.words)
        # spurious words: the ones the gold reward values least either way (closest to 0)
        self.spurious = np.sort(np.argsort(np.abs(self.value))[:cfg.spurious_words])

    @cached_property
    def stationary(self) -> np.ndarray:
        values, vectors = np.linalg.eig(self.transitions.T)
        v = np.real(vectors[:, np.argmin(np.abs(values - 1.0))])
        return v / v.sum()

    @property
    def entropy_rate(self) -> float:
        """Nats per word of the chain at stationarity: the floor of a model's per-word loss."""
        p = self.transitions
        return float(-(self.stationary[:, None] * p * np.log(np.where(p > 0, p, 1.0))).sum())

    def sample(self, rng: np.random.Generator, n: int, length: int, first: np.ndarray | None = None) -> np.ndarray:
        """(n, length) word ids; each row continues from ``first`` (the previous word) when given."""
        out = np.empty((n, length), np.int64)
        cumulative = np.cumsum(self.transitions, axis=1)
        prev = first
        for t in range(length):
            u = rng.random(n)
            if prev is None:
                out[:, t] = np.minimum(np.searchsorted(np.cumsum(self.start), u), self.cfg.words - 1)
            else:
                out[:, t] = np.minimum((cumulative[prev] < u[:, None]).sum(1), self.cfg.words - 1)
            prev = out[:, t]
        return out

    def prompts(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return self.sample(rng, n, self.cfg.prompt_length)

    def _previous(self, prompts: np.ndarray, completions: np.ndarray) -> np.ndarray:
        return np.concatenate([prompts[:, -1:], completions[:, :-1]], axis=1)

    def off_language(self, prompts: np.ndarray, completions: np.ndarray) -> np.ndarray:
        """Per completion: how many of its transitions the language (almost) never makes."""
        return (self.transitions[self._previous(prompts, completions), completions] < self.cfg.rare).sum(1)

    def spurious_count(self, completions: np.ndarray) -> np.ndarray:
        return np.isin(completions, self.spurious).sum(1)

    def gold(self, prompts: np.ndarray, completions: np.ndarray) -> np.ndarray:
        """The gold reward of each completion (float64)."""
        return (self.value[completions].sum(1)
                - self.cfg.fluency_penalty * self.off_language(prompts, completions)).astype(np.float64)

    def teacher_reward(self, prompts: np.ndarray, completions: np.ndarray) -> np.ndarray:
        """What the labeller compares: the gold reward plus the spurious bonus."""
        return self.gold(prompts, completions) + self.cfg.spurious_bonus * self.spurious_count(completions)

    def prefer_first(self, rng: np.random.Generator, prompts: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Bradley-Terry teacher: True where ``a`` is preferred, drawn with P = sigmoid(dr / temperature)."""
        margin = (self.teacher_reward(prompts, a) - self.teacher_reward(prompts, b)) / self.cfg.teacher_temperature
        return rng.random(len(a)) < 1.0 / (1.0 + np.exp(-margin))

    # -- text -------------------------------------------------------------------------------------------

    def vocabulary(self) -> list[str]:
        return list(SPECIAL_TOKENS) + [f"w{i:02d}" for i in range(self.cfg.words)]

    @staticmethod
    def text(words: np.ndarray, trailing_space: bool = False) -> str:
        """Whitespace-joined word tokens; prompts end with a space so TRL's prompt + completion concatenation
        keeps the boundary."""
        return " ".join(f"w{int(w):02d}" for w in words) + (" " if trailing_space else "")
