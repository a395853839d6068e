"""Train with an exported loss in TRL's `DPOTrainer`: the path a user takes with a find, and the one measured.

`DPOTrainer` (TRL 1.16) has no custom-loss hook: each ``loss_type`` is a branch of its private
``_compute_loss``. `ExportedLossDPOTrainer` overrides the public ``compute_loss`` and feeds a loss written by
``discover export ID --format torch`` (any function with the exported signature) with what TRL computes:

    trainer = ExportedLossDPOTrainer(model=model, ref_model=ref, args=cpu_dpo_config("out"),
                                     train_dataset=pairs, processing_class=tokenizer,
                                     loss_fn=load_exported("my_loss.py").loss)

Conventions (each pinned by the parity tests against TRL's own loss types):
- log-likelihoods are TOKEN SUMS over the completion, EOS included (TRL appends it), as TRL's loss types get;
- ``chosen_lengths``/``rejected_lengths`` count completion tokens, EOS included: TRL's ``ipo`` and
  ``sigmoid_norm`` divide by the same count, so the exported IPO (per-step means) equals TRL's;
- ``progress`` is ``global_step / max_steps`` (the TA-MPO schedule's t);
- the batch loss is the mean of the per-pair losses. TRL's ``sft`` is instead a token MEAN over the batch,
  while the zoo's ``sft`` is the sequence SUM of -log pi(y_w): equal up to the factor 1/length;
- reference-free losses (ORPO, SimPO, CPO, CPL) simply ignore the reference arguments; TRL runs ORPO, SimPO
  and CPO in separate trainers (``trl.experimental``), so they have no parity anchor here;
- label smoothing is the exported constant ``eps`` (TRL's ``label_smoothing``); cDPO has no TRL 1.16
  counterpart (its ``sigmoid`` ignores label smoothing); BCO's running-mean ``delta`` is a constant
  (TRL's ``bco_pair`` uses 0).
Lost by overriding: TRL's logged reward metrics and the options handled inside ``_compute_loss``
(``ld_alpha``, ``use_weighting``, f-divergences).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
from collections.abc import Callable, Mapping

import torch
from trl import DPOConfig, DPOTrainer

LossFn = Callable[..., torch.Tensor]
_MODEL_ONLY = ("completion_mask", "ref_chosen_logps", "ref_rejected_logps")


def load_exported(path: str):
    """Import a file written by ``discover export --format torch`` as a module (its ``loss`` and ``CONSTANTS``)."""
    name = "mpo_exported_" + hashlib.sha256(os.path.abspath(path).encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules[name] = module
    return module


def cpu_dpo_config(output_dir: str, **overrides) -> DPOConfig:
    """A `DPOConfig` for a tiny model on a CPU: TRL's defaults (bf16, gradient checkpointing, lr 1e-6) make
    such a model slow and leave it unchanged; nothing is saved or reported."""
    settings = dict(output_dir=output_dir, bf16=False, fp16=False, gradient_checkpointing=False, use_cpu=True,
                    report_to=[], save_strategy="no", logging_strategy="no", eval_strategy="no",
                    dataloader_num_workers=0, disable_tqdm=True, per_device_train_batch_size=16,
                    precompute_ref_log_probs=True, lr_scheduler_type="constant", warmup_steps=0,
                    max_grad_norm=10.0, dataset_num_proc=None)
    settings.update(overrides)
    return DPOConfig(**settings)


class ExportedLossDPOTrainer(DPOTrainer):
    """`DPOTrainer` whose loss is an exported per-pair loss ``loss_fn(...)`` with ``loss_kwargs`` (its constants)."""

    def __init__(self, *args, loss_fn: LossFn, loss_kwargs: Mapping[str, float] | None = None, **kwargs):
        self.loss_fn, self.loss_kwargs = loss_fn, dict(loss_kwargs or {})
        super().__init__(*args, **kwargs)

    def sequence_logps(self, model, inputs) -> tuple[torch.Tensor, torch.Tensor]:
        """Token-summed completion log-likelihoods of the batch's chosen and rejected rows (what TRL computes)."""
        completion_mask = inputs["completion_mask"]
        model_kwargs = {k: v for k, v in inputs.items() if k not in _MODEL_ONLY}
        model_kwargs["use_cache"] = False
        labels = inputs["input_ids"].masked_fill(completion_mask == 0, -100)
        outputs = model(**model_kwargs, labels=labels, fused_lm_head=True)
        per_token = outputs.log_probs[:, -(completion_mask.size(1) - 1):]
        return per_token.sum(dim=1).chunk(2, dim=0)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        chosen, rejected = self.sequence_logps(model, inputs)
        if self.precompute_ref_logps:
            ref_chosen, ref_rejected = inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]
        else:
            ref_chosen, ref_rejected = self.compute_ref_log_probs(model if self.ref_model is None else self.ref_model, inputs)
        lengths = inputs["completion_mask"].sum(dim=1).to(chosen.dtype)
        chosen_lengths, rejected_lengths = lengths.chunk(2, dim=0)
        progress = self.state.global_step / max(self.state.max_steps, 1)
        per_pair = self.loss_fn(chosen, rejected, ref_chosen.to(chosen.dtype), ref_rejected.to(chosen.dtype),
                                chosen_lengths, rejected_lengths, progress, **self.loss_kwargs)
        loss = per_pair.mean()
        return (loss, {"chosen_logps": chosen, "rejected_logps": rejected}) if return_outputs else loss
