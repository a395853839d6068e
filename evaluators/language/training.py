"""One training run on the language suite and its KL-budgeted score.

A run trains a copy of pi_ref through `ExportedLossDPOTrainer` and, every ``eval_every`` steps, measures
KL(pi || pi_ref) on a small probe set; it stops once the probe's KL reaches the budget K. The policy is
then evaluated on held-out prompts (gold reward of sampled completions, win rate against pi_ref's
completions on the same prompts, KL) at the last two checkpoints, and its reward AT the budget is read by
linear interpolation in KL between them: what the loss buys with K nats, as a user who stops at a KL
budget gets it. A run that never reaches K is scored where it ends (no extrapolation), so a loss that
barely moves is not flattered, and one that moves far is judged where it crossed K, not where it ended.

The budget is the KL of best-of-N sampling from pi_ref, log N - (N - 1)/N (its closed-form bound), and the
ceiling is best-of-N's expected gold reward on the same prompts: 0 = pi_ref, 100 = best-of-N at matched KL.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import tempfile
from dataclasses import dataclass, field
from math import comb

import numpy as np
import torch

from evaluators.language.generator import Language
from evaluators.language.model import sample, sequence_stats


def best_of_n_kl(n: float) -> float:
    return math.log(n) - (n - 1) / n


@dataclass(frozen=True)
class LMTrain:
    batch: int = 16
    max_steps: int = 128
    eval_every: int = 8
    budget_n: int = 8  # KL budget = best-of-budget_n's KL bound
    probe_prompts: int = 128
    eval_prompts: int = 256
    eval_samples: int = 4
    bon_samples: int = 16  # pi_ref samples per evaluation prompt for the best-of-N curve

    @property
    def kl_budget(self) -> float:
        return best_of_n_kl(self.budget_n)


def expected_best_of(gold: np.ndarray, n: int) -> float:
    """E[max of n draws] per row of ``gold`` (m >= n samples each), the unbiased order-statistics estimator."""
    m = gold.shape[1]
    weights = np.array([comb(i, n - 1) for i in range(m)], dtype=np.float64) / comb(m, n)
    return float((np.sort(gold, axis=1) * weights).sum(1).mean())


class Evaluation:
    """The held-out prompts of one (pi_ref, evaluation seed), pi_ref's completions, its best-of-N ceiling."""

    def __init__(self, language: Language, reference, cfg: LMTrain, eval_seed: int):
        self.language, self.reference, self.cfg, self.seed = language, reference, cfg, eval_seed
        rng = np.random.default_rng([eval_seed, 41])
        self.prompts = language.prompts(rng, cfg.eval_prompts)
        self.probe = language.prompts(rng, cfg.probe_prompts)
        self.ref_completions = sample(reference, language, self.prompts, cfg.eval_samples, seed=eval_seed)
        self.ref_gold = language.gold(np.repeat(self.prompts, cfg.eval_samples, 0), self.ref_completions)
        pool = sample(reference, language, self.prompts, cfg.bon_samples, seed=eval_seed + 1)
        bon = language.gold(np.repeat(self.prompts, cfg.bon_samples, 0), pool).reshape(len(self.prompts), -1)
        self.best_of = {n: expected_best_of(bon, n) for n in range(1, cfg.bon_samples + 1)}

    @property
    def reward_ref(self) -> float:
        return float(self.ref_gold.mean())

    @property
    def ceiling(self) -> float:
        return self.best_of[self.cfg.budget_n]

    def probe_kl(self, model) -> float:
        completions = sample(model, self.language, self.probe, 1, seed=self.seed + 2)
        return float(sequence_stats(model, self.reference, self.probe, completions)["kl"].mean())

    def evaluate(self, model) -> dict:
        """Gold reward, win rate against pi_ref's completions (same prompts; ties count 1/2), KL, spurious use."""
        completions = sample(model, self.language, self.prompts, self.cfg.eval_samples, seed=self.seed)
        prompts = np.repeat(self.prompts, self.cfg.eval_samples, 0)
        gold = self.language.gold(prompts, completions)
        stats = sequence_stats(model, self.reference, self.prompts, completions)
        win = np.where(gold > self.ref_gold, 1.0, np.where(gold == self.ref_gold, 0.5, 0.0))
        return {"gold": float(gold.mean()), "win": float(win.mean()), "kl": float(stats["kl"].mean()),
                "off_language": float(self.language.off_language(prompts, completions).mean()),
                "spurious": float(self.language.spurious_count(completions).mean())}

    def normalise(self, reward: float) -> float:
        return 100.0 * (reward - self.reward_ref) / (self.ceiling - self.reward_ref)


@contextlib.contextmanager
def _quiet_tqdm():
    """TRL draws a tqdm bar while it precomputes reference log-probs; it reads TQDM_DISABLE at the call."""
    before = os.environ.get("TQDM_DISABLE")
    os.environ["TQDM_DISABLE"] = "1"
    try:
        yield
    finally:
        if before is None:
            del os.environ["TQDM_DISABLE"]
        else:
            os.environ["TQDM_DISABLE"] = before


class _NonFinite(RuntimeError):
    pass


@dataclass
class RunResult:
    at_budget: dict  # gold, win, kl at the budget point (interpolated) or at the end
    final: dict  # the last checkpoint's evaluation
    score: float  # normalised reward at the budget
    path: list = field(default_factory=list)  # (step, probe KL) per checkpoint
    reached: bool = False
    failure: str = ""


def _interpolate(a: dict, b: dict, kl: float) -> dict:
    span = b["kl"] - a["kl"]
    w = float(np.clip((kl - a["kl"]) / span, 0.0, 1.0)) if span > 0 else 1.0
    return {k: a[k] + w * (b[k] - a[k]) for k in a}


def train_and_score(language: Language, reference, tokenizer, pairs_dataset, loss_fn, loss_kwargs: dict,
                    lr: float, cfg: LMTrain, seed: int, evaluation: Evaluation) -> RunResult:
    """Train one loss from ``reference`` through TRL and score it at the KL budget (see the module doc)."""
    from transformers import PrinterCallback, TrainerCallback

    from evaluators.language.trl_adapter import ExportedLossDPOTrainer, cpu_dpo_config

    budget = cfg.kl_budget
    # a fresh module with pi_ref's weights: TRL patches the modules it is given, so a deep copy of a module
    # TRL has seen would share that patch with it
    model = type(reference)(copy.deepcopy(reference.config))
    model.load_state_dict(reference.state_dict())
    model.train()
    checkpoints: list[tuple[int, float, dict]] = [(0, 0.0, None)]

    class Budget(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step % cfg.eval_every and state.global_step < state.max_steps:
                return
            model.eval()
            kl = evaluation.probe_kl(model)
            model.train()
            checkpoints.append((state.global_step, kl, {k: v.detach().clone() for k, v in model.state_dict().items()}))
            del checkpoints[1:-2]  # the last two are all the interpolation needs
            path.append((state.global_step, kl))
            if kl >= budget:
                control.should_training_stop = True

    class Checked(ExportedLossDPOTrainer):
        def compute_loss(self, *args, **kwargs):
            loss = super().compute_loss(*args, **kwargs)
            value = loss[0] if isinstance(loss, tuple) else loss
            if not torch.isfinite(value):
                raise _NonFinite(f"non-finite loss at step {self.state.global_step}")
            return loss

    path: list[tuple[int, float]] = []
    failure = ""
    with tempfile.TemporaryDirectory() as out, _quiet_tqdm():
        trainer = Checked(model=model, ref_model=reference, train_dataset=pairs_dataset, processing_class=tokenizer,
                          args=cpu_dpo_config(out, per_device_train_batch_size=cfg.batch, max_steps=cfg.max_steps,
                                              learning_rate=lr, seed=seed, data_seed=seed),
                          loss_fn=loss_fn, loss_kwargs=loss_kwargs, callbacks=[Budget()])
        trainer.remove_callback(PrinterCallback)
        try:
            trainer.train()
        except _NonFinite as e:
            failure = str(e)
    ref_point = {"gold": evaluation.reward_ref, "win": 0.5, "kl": 0.0, "off_language": np.nan, "spurious": np.nan}
    points = []
    for step, _, state in checkpoints[-2:]:
        if state is None:
            points.append(ref_point)
            continue
        model.load_state_dict(state)
        model.eval()
        points.append(evaluation.evaluate(model))
    final = points[-1]
    reached = final["kl"] >= budget
    keys = ("gold", "win", "kl")
    at = _interpolate({k: points[0][k] for k in keys}, {k: final[k] for k in keys}, budget) if reached \
        else {k: final[k] for k in keys}
    if reached and len(points) == 2 and points[0]["kl"] >= budget:  # the probe under-read the earlier point
        at = {k: points[0][k] for k in keys}
    return RunResult(at, final, evaluation.normalise(at["gold"]), path, reached, failure)
