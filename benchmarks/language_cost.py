"""What one language-suite run costs, piece by piece (one torch thread, as the suite's workers run).

pi_ref SFT (from scratch, not the cache), building the pairs, TRL's DPOTrainer construction (tokenising,
precomputing reference log-probs), training s/step at the suite's batch, one KL probe, one full evaluation,
and a whole run of DPO as the suite scores it; peak resident memory. Prints JSON.

    python benchmarks/language_cost.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time

import numpy as np


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    t0 = time.perf_counter()
    import torch

    from evaluators.language import suite as lm
    from evaluators.language.model import sft_reference
    from evaluators.language.training import Evaluation, train_and_score
    from evaluators.language.trl_adapter import ExportedLossDPOTrainer, cpu_dpo_config
    from grammar.zoo import baseline

    lm._init_worker()
    imports = time.perf_counter() - t0
    suite = lm.LM_SUITE
    language = lm._language(suite.language)
    t = time.perf_counter()
    ref = sft_reference(language, suite.model, suite.sft, seed=0)
    sft_s = time.perf_counter() - t
    t = time.perf_counter()
    pairs = lm.build_pairs(language, ref, "clean", suite.n_pairs, 1, 0)
    pairs_s = time.perf_counter() - t
    t = time.perf_counter()
    evaluation = Evaluation(language, ref, suite.train, 20_000)
    evaluation_setup_s = time.perf_counter() - t
    tokenizer = lm._tokenizer(suite.language)
    dataset = pairs.to_dataset(language)
    module = lm._loss_module(lm.loss_source(baseline("dpo")), tempfile.mkdtemp())
    out = {"imports_s": imports, "sft_s": sft_s, "sft_steps": suite.sft.steps, "pairs_s": pairs_s,
           "evaluation_setup_s": evaluation_setup_s, "parameters": sum(p.numel() for p in ref.parameters())}
    construct, per_step, probe, full, run = [], [], [], [], []
    for _ in range(args.repeats):
        model = type(ref)(ref.config)
        model.load_state_dict(ref.state_dict())
        with tempfile.TemporaryDirectory() as folder:
            t = time.perf_counter()
            trainer = ExportedLossDPOTrainer(model=model, ref_model=ref, train_dataset=dataset, processing_class=tokenizer,
                                             args=cpu_dpo_config(folder, per_device_train_batch_size=suite.train.batch,
                                                                 max_steps=64, learning_rate=1e-4),
                                             loss_fn=module.loss, loss_kwargs=dict(module.CONSTANTS))
            construct.append(time.perf_counter() - t)
            from transformers import PrinterCallback

            trainer.remove_callback(PrinterCallback)
            t = time.perf_counter()
            trainer.train()
            per_step.append((time.perf_counter() - t) / 64)
        model.eval()
        t = time.perf_counter()
        evaluation.probe_kl(model)
        probe.append(time.perf_counter() - t)
        t = time.perf_counter()
        evaluation.evaluate(model)
        full.append(time.perf_counter() - t)
        t = time.perf_counter()
        train_and_score(language, ref, tokenizer, dataset, module.loss, dict(module.CONSTANTS), 1e-4, suite.train, 7,
                        evaluation)
        run.append(time.perf_counter() - t)
    med = lambda v: float(np.median(v))  # noqa: E731
    out.update({"trainer_construction_s": med(construct), "train_s_per_step": med(per_step),
                "batch_pairs": suite.train.batch, "kl_probe_s": med(probe), "full_evaluation_s": med(full),
                "dpo_run_as_scored_s": med(run), "torch_threads": torch.get_num_threads(),
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
