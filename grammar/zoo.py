"""The baseline zoo: published preference-optimisation losses written in the grammar.

Notation: h = logp - ref (policy-minus-reference log-ratio of a segment), Delta = h_w - h_l,
l(x) = -log sigma(x) = softplus(-x); sums unless "per-step mean" (p-bar = logp / len) is said.

Continuous actions: pi(y) is a density, so a log-likelihood can be positive.
* ORPO's log-odds log(p / (1 - p)) = p-bar - log(1 - e^p-bar) needs p-bar < 0.  We use the operator
  log1mexp, whose argument is clipped to <= -1e-6: for p-bar >= -1e-6 the log-odds is
  p-bar - log(1 - e^-1e-6) = p-bar + 13.8155..., still increasing in p-bar (slope 1), finite and
  continuous; for p-bar < -1e-6 it is exact.  Near p-bar = 0 the exact log-odds is steep
  (slope 1 / (1 - e^p-bar)), which the clip caps at about 1e6.
* SimPO's margin beta * (p-bar_w - p-bar_l) - gamma needs no guard: the per-step means are finite since
  lengths are >= 1 (means are computed as sum / max(len, 1)).  But a density's p-bar is unbounded above
  (a narrower Gaussian raises it), so without a reference term nothing anchors the scale of the margin:
  beta must be read per task, not transferred from LLM settings.
"""
from __future__ import annotations

import types
from dataclasses import dataclass
from typing import Mapping

from grammar.objective import Objective

ONE_SIDE_MEAN_RATIO = "phi_inv(mlogp) - phi_inv(mref)"  # IPO's length-averaged log-ratio


@dataclass(frozen=True)
class Baseline:
    objective: Objective
    paper: str
    arxiv: str | None  # None: no arXiv version exists (see `paper`)
    formula: str  # the published formula in the notation above


def _entries() -> tuple[Baseline, ...]:
    mpo, free = Objective.mpo, Objective.free
    return (
        Baseline(free("sft", "-logp_w"),
                 "Ouyang et al. 2022, Training language models to follow instructions with human feedback "
                 "(supervised fine-tuning / behaviour cloning on y_w)", "2203.02155",
                 "-log pi(y_w)"),
        Baseline(mpo("dpo", g="-logsigmoid(z)"),
                 "Rafailov et al. 2023, Direct Preference Optimization: Your Language Model is Secretly a "
                 "Reward Model", "2305.18290", "l(beta Delta)"),
        Baseline(mpo("cdpo", g="(1 - eps)*(-logsigmoid(z)) + eps*(-logsigmoid(-z))", monotone=False),
                 "Mitchell 2023, A Note on DPO with Noisy Preferences & Relationship to IPO "
                 "(conservative DPO; technical note, https://ericmitchell.ai/cdpo.pdf)", None,
                 "(1 - eps) l(beta Delta) + eps l(-beta Delta)"),
        Baseline(mpo("robust_dpo", g="((1 - eps)*(-logsigmoid(z)) - eps*(-logsigmoid(-z)))/(1 - 2*eps)"),
                 "Chowdhury et al. 2024, Provably Robust DPO: Aligning Language Models with Noisy "
                 "Feedback", "2403.00409", "[(1 - eps) l(beta Delta) - eps l(-beta Delta)] / (1 - 2 eps)"),
        Baseline(mpo("ipo", psi=ONE_SIDE_MEAN_RATIO, g="(z - 1/(2*beta))**2", monotone=False),
                 "Azar et al. 2023, A General Theoretical Paradigm to Understand Learning from Human "
                 "Preferences (length normalisation as in TRL: per-step mean log-ratios)", "2310.12036",
                 "(Delta-bar - 1/(2 beta))^2, Delta-bar from per-step mean log-ratios"),
        Baseline(mpo("hinge", g="relu(1 - z)"),
                 "Zhao et al. 2023, SLiC-HF: Sequence Likelihood Calibration with Human Feedback",
                 "2305.10425", "max(0, 1 - beta Delta)"),
        Baseline(mpo("orpo", phi_inv="u - log1mexp(u)", psi="phi_inv(mlogp)", g="-lam*logsigmoid(z)",
                     imitation="1", constants={"lam": 0.1}),
                 "Hong et al. 2024, ORPO: Monolithic Preference Optimization without Reference Model",
                 "2403.07691", "-p-bar_w - lam log sigma(logodds(p-bar_w) - logodds(p-bar_l)); "
                 "logodds(p) = p - log(1 - e^p) (guarded: see the module note)"),
        Baseline(mpo("simpo", psi="beta*phi_inv(mlogp)", g="-logsigmoid(z - gamma)",
                     constants={"beta": 2.0, "gamma": 0.5}),
                 "Meng et al. 2024, SimPO: Simple Preference Optimization with a Reference-Free Reward",
                 "2405.14734", "l(beta (p-bar_w - p-bar_l) - gamma)"),
        Baseline(mpo("cpo", psi="beta*phi_inv(logp)", g="(1 - eps)*(-logsigmoid(z)) + eps*(-logsigmoid(-z))",
                     imitation="lam", constants={"eps": 0.0, "lam": 1.0}, monotone=False),
                 "Xu et al. 2024, Contrastive Preference Optimization: Pushing the Boundaries of LLM "
                 "Performance in Machine Translation (NLL averaged per step, as in TRL)", "2401.08417",
                 "(1 - eps) l(beta z) + eps l(-beta z) + lam * (-p-bar_w), z = logp_w - logp_l"),
        Baseline(mpo("discopop", g="(1 - sigmoid(z/tau))*(-logsigmoid(z)) + sigmoid(z/tau)*exp(-z)",
                     constants={"tau": 0.05}, monotone=False),
                 "Chris Lu et al. 2024, Discovering Preference Optimization Algorithms with and for Large "
                 "Language Models (DiscoPOP / LRML)", "2406.08414",
                 "(1 - sigma(beta Delta / tau)) l(beta Delta) + sigma(beta Delta / tau) e^(-beta Delta)"),
        Baseline(free("nca_pair", "-logsigmoid(beta*(logp_w - ref_w)) - logsigmoid(-beta*(logp_w - ref_w))/2"
                                  " - logsigmoid(-beta*(logp_l - ref_l))/2", monotone=False),
                 "Chen et al. 2024, Noise Contrastive Alignment of Language Models with Explicit Rewards",
                 "2402.05369", "l(beta h_w) + l(-beta h_w)/2 + l(-beta h_l)/2"),
        Baseline(free("bco_pair", "-logsigmoid(beta*(logp_w - ref_w) - delta)"
                                  " - logsigmoid(-(beta*(logp_l - ref_l) - delta))"),
                 "Jung et al. 2024, Binary Classifier Optimization for Large Language Model Alignment "
                 "(delta: the running mean reward, a constant here)", "2404.04656",
                 "l(beta h_w - delta) + l(-(beta h_l - delta))"),
        Baseline(free("apo_zero", "(1 - sigmoid(beta*(logp_w - ref_w))) + sigmoid(beta*(logp_l - ref_l))"),
                 "D'Oosterlinck et al. 2024, Anchored Preference Optimization and Contrastive Revisions: "
                 "Addressing Underspecification in Alignment", "2408.06266",
                 "(1 - sigma(beta h_w)) + sigma(beta h_l)"),
        Baseline(free("apo_down", "sigmoid(beta*(logp_w - ref_w))"
                                  " + (1 - sigmoid(beta*(logp_w - ref_w - logp_l + ref_l)))", monotone=False),
                 "D'Oosterlinck et al. 2024, Anchored Preference Optimization and Contrastive Revisions: "
                 "Addressing Underspecification in Alignment", "2408.06266",
                 "sigma(beta h_w) + (1 - sigma(beta Delta))"),
        Baseline(free("sppo_hard", "(logp_w - ref_w - 1/(2*beta))**2 + (logp_l - ref_l + 1/(2*beta))**2",
                      monotone=False),
                 "Wu et al. 2024, Self-Play Preference Optimization for Language Model Alignment (hard-label "
                 "pair form, as in TRL)", "2405.00675", "(h_w - 1/(2 beta))^2 + (h_l + 1/(2 beta))^2"),
        Baseline(mpo("exo_pair", g="sigmoid(z)*(logsigmoid(z) - log1p(-eps))"
                                   " + sigmoid(-z)*(logsigmoid(-z) - log(eps))",
                     constants={"eps": 1e-3}, ranges={"eps": (1e-3, 0.49)}, monotone=False),
                 "Ji et al. 2024, Towards Efficient Exact Optimization of Language Model Alignment "
                 "(pairwise EXO; eps >= 1e-3 as in TRL)", "2402.00856",
                 "sigma(beta Delta)[log sigma(beta Delta) - log(1 - eps)] + "
                 "sigma(-beta Delta)[log sigma(-beta Delta) - log eps]"),
        Baseline(free("cpl", "-logsigmoid(beta*(logp_w - lam*logp_l))", constants={"beta": 0.1, "lam": 0.5}),
                 "Hejna et al. 2023, Contrastive Preference Learning: Learning from Human Feedback without "
                 "RL (biased BCE over alpha * sum log pi with conservative bias lam < 1, no reference, "
                 "undiscounted segments; alpha is beta here)", "2310.13639",
                 "l(beta (log pi(y_w) - lam log pi(y_l)))"),
        Baseline(mpo("ta_mpo", g="t*(-logsigmoid(z))", imitation="1 - t"),
                 "Alfano et al. 2024, Meta-Learning Objectives for Preference Optimization (temporally "
                 "aware MPO: imitation first, preference optimisation later; linear schedule)", "2411.06568",
                 "(1 - t) (-p-bar_w) + t l(beta Delta)"),
    )


ZOO: Mapping[str, Baseline] = types.MappingProxyType({b.objective.name: b for b in _entries()})


def baseline(name: str) -> Objective:
    """The objective of a named baseline (see `ZOO` for citations and formulas)."""
    if name not in ZOO:
        raise KeyError(f"unknown baseline {name!r}; known: {', '.join(ZOO)}")
    return ZOO[name].objective
