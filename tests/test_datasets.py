"""Preference datasets: determinism, content hashing, cache integrity, variants, teachers."""

import os

import numpy as np
import pytest

from evaluators import datasets as D
from evaluators.tasks import TASKS

HOPPER = TASKS["hopper"]
SMALL = D.DatasetConfig(n_pairs=48, segment_length=20, max_prefix=60)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("datasets"))


def test_same_arguments_give_byte_identical_files(tmp_path):
    a = D.build(HOPPER, "noisy:0.2", seed=3, config=SMALL, cache=str(tmp_path / "a"))
    b = D.build(HOPPER, "noisy:0.2", seed=3, config=SMALL, cache=str(tmp_path / "b"))
    assert a.content_hash == b.content_hash
    assert open(a.path, "rb").read() == open(b.path, "rb").read()
    c = D.build(HOPPER, "noisy:0.2", seed=4, config=SMALL, cache=str(tmp_path / "a"))
    assert c.content_hash != a.content_hash
    assert os.stat(a.path).st_mode & 0o777 == 0o644, "a cache file is readable by the other users of a cache"


def test_cache_hit_returns_same_content(cache):
    a = D.build(HOPPER, "clean", seed=0, config=SMALL, cache=cache)
    mtime = os.path.getmtime(a.path)
    b = D.build(HOPPER, "clean", seed=0, config=SMALL, cache=cache)
    assert os.path.getmtime(b.path) == mtime
    assert b.content_hash == a.content_hash
    for k in a.arrays:
        np.testing.assert_array_equal(a[k], b[k])


@pytest.mark.parametrize("damage", ["truncate", "flip_byte", "garbage"])
def test_corrupted_cache_file_is_detected_and_rebuilt(tmp_path, damage):
    ds = D.build(HOPPER, "clean", seed=1, config=SMALL, cache=str(tmp_path))
    raw = open(ds.path, "rb").read()
    if damage == "truncate":
        broken = raw[: len(raw) // 2]
    elif damage == "flip_byte":
        broken = bytearray(raw)
        broken[-5] ^= 0xFF  # inside the last array's data: parses fine, hash differs
        broken = bytes(broken)
    else:
        broken = b"not a dataset"
    open(ds.path, "wb").write(broken)
    with pytest.raises(D.DatasetError):
        D.load(ds.path)
    events = []
    again = D.build(HOPPER, "clean", seed=1, config=SMALL, cache=str(tmp_path), on_event=events.append)
    assert events and "rebuilding" in events[0]
    assert again.content_hash == ds.content_hash
    assert open(again.path, "rb").read() == raw


def test_pairs_share_start_state_and_are_consistent(cache):
    ds = D.build(HOPPER, "clean", seed=0, config=SMALL, cache=cache)
    # Both segments begin with the observation of the shared start state.
    np.testing.assert_array_equal(ds["obs_w"][:, 0], ds["obs_l"][:, 0])
    np.testing.assert_allclose(ds["ret_w"], (ds["rew_w"] * ds.mask("w")).sum(1), rtol=1e-5, atol=1e-4)
    assert np.all((ds["len_w"] >= 1) & (ds["len_w"] <= SMALL.segment_length))
    # Steps past a segment's end are zero padded.
    assert np.all(ds["rew_w"][ds.mask("w") == 0] == 0)
    assert np.all(np.abs(ds["act_w"]) <= 1.0)
    assert np.all(ds["ret_w"] >= ds["ret_l"])  # clean labels follow the true return


def test_label_noise_matches_flip_probability(cache):
    config = D.DatasetConfig(n_pairs=400, segment_length=10, max_prefix=20)
    ds = D.build(HOPPER, "noisy:0.3", seed=0, config=config, cache=cache)
    agree = D.statistics(ds)["label_agreement"]
    # Flipping with p=0.3 leaves ~70% agreement (binomial sd ~2.3% at n=400; ties count as agreement).
    assert 0.62 < agree < 0.80


def test_mixed_variant_draws_poor_chosen_segments(cache):
    ds = D.build(HOPPER, "mixed", seed=0, config=SMALL, cache=cache)
    levels = D.statistics(ds)["chosen_levels"]
    assert levels["random"] + levels["low"] > 0
    clean = D.build(HOPPER, "clean", seed=0, config=SMALL, cache=cache)
    assert set(np.unique(clean["level_w"])) <= {2, 3}


def test_teachers_equal_skip_myopic(cache):
    equal = D.build(HOPPER, "equal:0.5", seed=0, config=SMALL, cache=cache)
    diff = np.abs(equal["ret_w"] - equal["ret_l"])
    margin = max(np.abs(equal["ret_w"]).max(), np.abs(equal["ret_l"]).max())
    np.testing.assert_array_equal(equal["pref"] == 0.5, diff < 0.5 * margin)
    skip = D.build(HOPPER, "skip:0.9", seed=0, config=SMALL, cache=cache)
    assert skip.n_pairs < SMALL.n_pairs
    myopic = D.build(HOPPER, "myopic:0.5", seed=0, config=SMALL, cache=cache)
    H = SMALL.segment_length
    w = 0.5 ** (H - 1 - np.arange(H))
    assert np.all((myopic["rew_w"] * w).sum(1) >= (myopic["rew_l"] * w).sum(1) - 1e-4)


@pytest.mark.parametrize("text,expected", [
    ("clean", ("clean", None)), ("noisy:0.1", ("noisy", 0.1)), ("noisy-0.2", ("noisy", 0.2)),
    ("noisy", ("noisy", 0.2)), ("stoch:0.5", ("stoch", 0.5)), ("myopic", ("myopic", 0.9)),
])
def test_parse_variant(text, expected):
    v = D.parse_variant(text)
    assert (v.name, v.param) == expected


@pytest.mark.parametrize("text,message", [
    ("dirty", "unknown dataset variant"), ("noisy:0.6", "outside [0, 0.5]"), ("noisy:-0.1", "outside"),
    ("noisy:abc", "must be a number"), ("clean:0.1", "takes no parameter"), ("noisy:nan", "outside"),
])
def test_bad_variants_are_rejected(text, message):
    with pytest.raises(D.DatasetError, match=message.replace("[", r"\[").replace("]", r"\]")):
        D.parse_variant(text)


def test_bad_config_and_unwritable_cache(tmp_path):
    with pytest.raises(D.DatasetError, match="segment length"):
        D.build(HOPPER, "clean", config=D.DatasetConfig(segment_length=-1), cache=str(tmp_path))
    with pytest.raises(D.DatasetError, match="n_pairs"):
        D.build(HOPPER, "clean", config=D.DatasetConfig(n_pairs=0), cache=str(tmp_path))
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(D.DatasetError, match="cannot create cache directory"):
        D.build(HOPPER, "clean", config=SMALL, cache=str(blocker / "datasets"))
    assert not any(p.name.endswith(".safetensors") for p in tmp_path.rglob("*"))
