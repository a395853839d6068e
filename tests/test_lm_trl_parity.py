"""The exported PyTorch losses inside TRL's DPOTrainer (through `ExportedLossDPOTrainer`) give the same per-pair
losses and gradients as TRL's own loss types on the same batch; the convention differences are pinned too
(TRL's ``sft`` is a token mean, the zoo's a sequence sum; lengths count the EOS).

TRL's fused LM head returns float32 log-probs even from a float64 model, so both sides compute in float32
and agree to float32 round-off (measured: <= 6e-8 absolute on losses of order 1), not bit for bit."""

import os
import tempfile

import numpy as np
import pytest

pytest.importorskip("trl", reason="the language suite's extra (transformers, trl) is not installed")

import torch  # noqa: E402
from trl import DPOTrainer  # noqa: E402

from evaluators.language.data import Pairs  # noqa: E402
from evaluators.language.generator import Language  # noqa: E402
from evaluators.language.model import build_model, build_tokenizer  # noqa: E402
from evaluators.language.trl_adapter import ExportedLossDPOTrainer, cpu_dpo_config, load_exported  # noqa: E402
from grammar.export import export  # noqa: E402
from grammar.zoo import baseline  # noqa: E402

# zoo name -> (TRL loss_type, the TRL arguments that carry the zoo's constants)
PARITY = {
    "dpo": ("sigmoid", {}),
    "hinge": ("hinge", {}),
    "robust_dpo": ("robust", {"label_smoothing": "eps"}),
    "ipo": ("ipo", {}),
    "exo_pair": ("exo_pair", {"label_smoothing": "eps"}),
    "nca_pair": ("nca_pair", {}),
    "bco_pair": ("bco_pair", {}),  # TRL has no running-mean delta: the zoo's delta stays 0
    "sppo_hard": ("sppo_hard", {}),
    "apo_zero": ("apo_zero", {}),
    "apo_down": ("apo_down", {}),
    "discopop": ("discopop", {"discopop_tau": "tau"}),
}
PAIRS = 4
LOSS_RTOL, GRAD_RTOL, GRAD_ATOL = 1e-6, 1e-4, 1e-6


@pytest.fixture(scope="module")
def setting():
    torch.set_num_threads(1)
    language = Language()
    rng = np.random.default_rng(3)
    prompts = language.prompts(rng, PAIRS)
    c = language.cfg.completion_length
    # completions of different lengths, so length conventions are exercised
    chosen = [language.sample(rng, 1, c - k, prompts[i, -1:])[0] for i, k in enumerate((0, 3, 5, 1))]
    rejected = [language.sample(rng, 1, c - k, prompts[i, -1:])[0] for i, k in enumerate((2, 0, 4, 6))]
    dataset = Pairs(prompts, chosen, rejected, None, None)
    from datasets import Dataset

    data = Dataset.from_dict({"prompt": [language.text(p, True) for p in prompts],
                              "chosen": [language.text(x) for x in chosen],
                              "rejected": [language.text(x) for x in rejected]})
    tokenizer = build_tokenizer(language)
    model = build_model(language, seed=0).double()
    ref = build_model(language, seed=1).double()  # another init, so that log-ratios are far from 0
    out = tempfile.mkdtemp()
    args = cpu_dpo_config(out, per_device_train_batch_size=1, precompute_ref_log_probs=False, max_steps=4)
    stock = DPOTrainer(model=model, ref_model=ref, args=args, train_dataset=data, processing_class=tokenizer)
    ours = ExportedLossDPOTrainer(model=model, ref_model=ref, args=args, train_dataset=data, processing_class=tokenizer,
                                  loss_fn=lambda *a, **k: None)
    batches = [b for _, b in zip(range(PAIRS), stock.get_train_dataloader())]
    return {"stock": stock, "ours": ours, "batches": batches, "model": model, "folder": out, "dataset": dataset}


def _loss_and_grads(trainer, model, batch):
    params = [p for p in model.parameters() if p.requires_grad]
    loss = trainer.compute_loss(model, batch)
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return loss.detach(), [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


def _exported(name, folder):
    path = os.path.join(folder, f"{name}.py")
    with open(path, "w") as f:
        f.write(export(baseline(name), "torch"))
    return load_exported(path)


@pytest.mark.parametrize("name", sorted(PARITY))
def test_exported_loss_equals_trl_loss_type_per_pair(setting, name):
    loss_type, carried = PARITY[name]
    module = _exported(name, setting["folder"])
    constants = dict(module.CONSTANTS)
    stock, ours, model = setting["stock"], setting["ours"], setting["model"]
    stock.loss_types, stock.loss_weights = [loss_type], [1.0]
    stock.beta = constants["beta"]
    stock.label_smoothing = 0.0
    for trl_name, ours_name in carried.items():
        if trl_name == "discopop_tau":
            stock.args.discopop_tau = constants[ours_name]
        else:
            setattr(stock, trl_name, constants[ours_name])
    ours.loss_fn, ours.loss_kwargs = module.loss, constants
    for batch in setting["batches"]:  # one pair per batch: per-pair values and gradients
        expected, expected_grads = _loss_and_grads(stock, model, batch)
        got, got_grads = _loss_and_grads(ours, model, batch)
        assert torch.isfinite(got)
        np.testing.assert_allclose(got.item(), expected.item(), rtol=LOSS_RTOL, atol=LOSS_RTOL)
        for g, e in zip(got_grads, expected_grads):
            np.testing.assert_allclose(g.numpy(), e.numpy(), rtol=GRAD_RTOL, atol=GRAD_ATOL)


def test_sft_is_a_token_mean_in_trl_and_a_sequence_sum_in_the_export(setting):
    module = _exported("sft", setting["folder"])
    stock, ours, model = setting["stock"], setting["ours"], setting["model"]
    stock.loss_types, stock.loss_weights = ["sft"], [1.0]
    ours.loss_fn, ours.loss_kwargs = module.loss, dict(module.CONSTANTS)
    for batch in setting["batches"]:
        chosen_tokens = batch["completion_mask"][0].sum().item()  # EOS included, as TRL counts it
        expected, _ = _loss_and_grads(stock, model, batch)
        got, _ = _loss_and_grads(ours, model, batch)
        np.testing.assert_allclose(got.item(), expected.item() * chosen_tokens, rtol=LOSS_RTOL)


def test_lengths_count_the_eos_and_progress_follows_the_step(setting):
    seen = []

    def spy(lw, ll, rw, rl, len_w, len_l, t):
        seen.append((int(len_w.item()), int(len_l.item()), t))
        return (lw - ll) * 0.0

    ours, model = setting["ours"], setting["model"]
    ours.loss_fn, ours.loss_kwargs = spy, {}
    ours.state.global_step, ours.state.max_steps = 1, 4
    for batch in setting["batches"]:  # the dataloader shuffles: compare the multiset of pairs
        ours.compute_loss(model, batch)
    c = setting["dataset"]
    assert sorted((w, l) for w, l, _ in seen) == sorted((len(a) + 1, len(b) + 1) for a, b in zip(c.chosen, c.rejected))
    assert {t for _, _, t in seen} == {0.25}
