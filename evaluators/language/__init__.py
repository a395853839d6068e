"""The language preference suite: a tiny causal LM, a generated language, a gold reward, training through TRL.

MuJoCo is the cheap proxy; this domain is where the losses are meant to be used. Everything is built in
process from seeds (no download): the language (`generator`), the tokenizer and model (`model`), pi_ref by
SFT, preference pairs sampled from pi_ref and labelled by a Bradley-Terry teacher (`data`), training through
TRL's `DPOTrainer` with an exported loss (`trl_adapter`), and KL-aware scoring and the validity gates (`suite`).
"""
