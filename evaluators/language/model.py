"""The tiny causal LM: tokenizer built in process, a GPT-2 from a config, pi_ref by SFT, sampling and scoring.

Nothing is downloaded: the tokenizer is a `tokenizers` WordLevel model over the language's words (special
tokens registered on it, so TRL's appended ``<eos>`` splits from the last word) and the model is built from
a `GPT2Config`. pi_ref is SFT on text from the language, cached per seed as safetensors.

Evaluation samples only words (special tokens masked) and measures, along the sampled completions, the
exact per-position KL between the two next-word distributions (over words), summed over the completion:
the sequence KL(pi || pi_ref) estimated with far less noise than the log-ratio of the samples.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass

import numpy as np
import torch

from evaluators.language.generator import EOS, FIRST_WORD, PAD, SPECIAL_TOKENS, Language
from evaluators.paths import cache_root


@dataclass(frozen=True)
class ModelConfig:
    layers: int = 2
    heads: int = 2
    width: int = 64


@dataclass(frozen=True)
class SFTConfig:
    steps: int = 1500
    batch: int = 64
    lr: float = 3e-3
    corpus: int = 20_000  # sequences of prompt + completion drawn from the language


def build_tokenizer(language: Language):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(language.vocabulary())}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.add_special_tokens(list(SPECIAL_TOKENS))
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")


def build_model(language: Language, cfg: ModelConfig = ModelConfig(), seed: int = 0):
    from transformers import GPT2Config, GPT2LMHeadModel

    length = language.cfg.prompt_length + language.cfg.completion_length + 2
    config = GPT2Config(vocab_size=len(language.vocabulary()), n_positions=length, n_embd=cfg.width,
                        n_layer=cfg.layers, n_head=cfg.heads, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                        bos_token_id=EOS, eos_token_id=EOS, pad_token_id=PAD)
    torch.manual_seed(seed)
    return GPT2LMHeadModel(config)


def _ids(words: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(words + FIRST_WORD, dtype=torch.long)


def sft_reference(language: Language, model_cfg: ModelConfig, sft: SFTConfig, seed: int, on_event=None):
    """pi_ref: the model trained by next-token prediction on prompt + completion + <eos> from the language."""
    model = build_model(language, model_cfg, seed)
    rng = np.random.default_rng([language.cfg.seed, seed, 23])
    c = language.cfg
    words = language.sample(rng, sft.corpus, c.prompt_length + c.completion_length)
    data = torch.cat([_ids(words), torch.full((sft.corpus, 1), EOS)], dim=1)
    generator = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.Adam(model.parameters(), lr=sft.lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda s: min(1.0, (s + 1) / 100) * (1 - s / sft.steps))
    model.train()
    for step in range(sft.steps):
        batch = data[torch.randint(0, sft.corpus, (sft.batch,), generator=generator)]
        loss = model(input_ids=batch, labels=batch).loss
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        if on_event and (step + 1) % 500 == 0:
            on_event(f"pi_ref seed {seed}: SFT step {step + 1}/{sft.steps}, loss {loss.item():.3f}")
    model.eval()
    return model


def reference_model(language: Language, model_cfg: ModelConfig, sft: SFTConfig, seed: int,
                    cache: str | None = None, on_event=None):
    """pi_ref for one seed, from the cache (safetensors, keyed by every input) or trained now and stored."""
    from safetensors.torch import load_file, save_file

    key = json.dumps({"language": asdict(language.cfg), "model": asdict(model_cfg), "sft": asdict(sft),
                      "seed": seed, "format": 1}, sort_keys=True)
    path = os.path.join(cache or cache_root(), "lm", f"ref-{hashlib.sha256(key.encode()).hexdigest()[:16]}.safetensors")
    model = build_model(language, model_cfg, seed)
    if os.path.exists(path):
        try:
            model.load_state_dict(load_file(path), strict=False)
            model.tie_weights()
            model.eval()
            return model
        except Exception:  # a damaged cache file is rebuilt
            os.remove(path)
    model = sft_reference(language, model_cfg, sft, seed, on_event)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    save_file(state, path + ".tmp")
    os.chmod(path + ".tmp", 0o644)
    os.replace(path + ".tmp", path)
    return model


def _word_logprobs(model, sequences: torch.Tensor) -> torch.Tensor:
    """log P(next word | prefix) over words only, for every position: (n, length, words)."""
    logits = model(input_ids=sequences).logits[..., FIRST_WORD:]
    return torch.log_softmax(logits.double(), dim=-1)


@torch.no_grad()
def sample(model, language: Language, prompts: np.ndarray, per_prompt: int, seed: int,
           temperature: float = 1.0) -> np.ndarray:
    """(len(prompts) * per_prompt, completion_length) word ids sampled from ``model`` (prompt-major order)."""
    generator = torch.Generator().manual_seed(seed)
    sequences = _ids(np.repeat(prompts, per_prompt, axis=0))
    for _ in range(language.cfg.completion_length):
        logits = model(input_ids=sequences).logits[:, -1, FIRST_WORD:].double() / temperature
        nxt = torch.multinomial(torch.softmax(logits, -1), 1, generator=generator)
        sequences = torch.cat([sequences, nxt + FIRST_WORD], dim=1)
    return (sequences[:, prompts.shape[1]:] - FIRST_WORD).numpy()


@torch.no_grad()
def sequence_stats(model, reference, prompts: np.ndarray, completions: np.ndarray) -> dict[str, np.ndarray]:
    """Per completion: log pi, log pi_ref (over words) and the summed per-position KL(pi || pi_ref)."""
    reps = len(completions) // len(prompts)
    sequences = torch.cat([_ids(np.repeat(prompts, reps, axis=0)), _ids(completions)], dim=1)
    start = prompts.shape[1] - 1
    targets = sequences[:, start + 1:]
    out = {}
    logp = _word_logprobs(model, sequences)[:, start:-1]
    logq = _word_logprobs(reference, sequences)[:, start:-1] if reference is not model else logp
    pick = lambda lp: lp.gather(-1, (targets - FIRST_WORD)[..., None])[..., 0].sum(1)  # noqa: E731
    out["logp"], out["ref"] = pick(logp).numpy(), pick(logq).numpy()
    out["kl"] = (logp.exp() * (logp - logq)).sum(-1).sum(1).numpy()
    return out
