"""Parsing LLM answers: JSON extraction, the safe grammar parser, and a reason for every rejection."""
import builtins
import json
import re
import time

import pytest
import sympy

import prompts
from discovery import llm_parse
from discovery.llm_parse import MAX_OBJECTIVES, MAX_RATIONALE_CHARS, parse_answer, parse_candidates
from discovery.llm_prompt import split_template


def answer(*items, **top) -> str:
    return json.dumps({"objectives": list(items), **top})


DPO = {"shape": "mpo", "g": "-logsigmoid(z)", "constants": {"beta": 0.2}, "rationale": "DPO, sharper"}
HINGE = {"shape": "free", "loss": "relu(1 - beta*(logp_w - ref_w - logp_l + ref_l))", "rationale": "hinge"}


def parse(text, **kw):
    kw.setdefault("validate", False)
    return parse_candidates(text, **kw)


def test_good_answer_gives_objectives_with_rationale_and_names():
    candidates, rejections = parse(answer(DPO, HINGE), name_prefix="llm7")
    assert rejections == []
    assert [c.objective.name for c in candidates] == ["llm7-1", "llm7-2"]
    dpo, hinge = (c.objective for c in candidates)
    assert dpo.shape == "mpo" and str(dpo.g) == "-logsigmoid(z)"
    assert dict(dpo.constants) == {"beta": 0.2}
    assert str(dpo.phi_inv) == "u" and str(dpo.imitation) == "0"  # omitted parts take their defaults
    assert hinge.shape == "free" and dict(hinge.constants) == {"beta": 0.1}  # default filled in
    assert [c.rationale for c in candidates] == ["DPO, sharper", "hinge"]
    objectives, _ = parse_answer(answer(DPO), validate=False)
    assert objectives[0].name == "llm-1"


def test_fence_and_prose_are_tolerated():
    text = f"Sure! Here are my ideas {{with braces}}.\n\n```json\n{answer(DPO)}\n```\n\nLet me know {{...}}"
    candidates, rejections = parse(text)
    assert rejections == [] and len(candidates) == 1
    text = f"I considered {{z}} first, then:\n{answer(DPO, HINGE)}\nHope this helps."  # no fence
    candidates, rejections = parse(text)
    assert rejections == [] and len(candidates) == 2
    text = f"```python\nprint('hi')\n```\n```\n{answer(HINGE)}\n```"  # bare fence, other fences skipped
    assert len(parse(text)[0]) == 1


@pytest.mark.parametrize("text, reason", [
    ("", "empty answer"),
    ("I cannot help with that.", "no JSON object"),
    ('{"objectives": [{"shape": "mpo", "g": "z",}]}', "malformed JSON"),  # trailing comma: not repaired
    ("{'objectives': []}", "malformed JSON"),  # Python literal, not JSON
    ('{"objectives": [{"shape": "mpo", "g": "-z"', "malformed JSON"),  # truncated answer
    ('{"objectives": [], "objectives": []}', "duplicate key"),
    ('{"objectives": [{"shape": "mpo", "g": "z", "constants": {"beta": NaN}}]}', "NaN is not a JSON number"),
    ('["softplus(-z)"]', "got a list"),
    ('{"objectives": {"shape": "mpo"}}', "'objectives' must be a list"),
    ('{"objectives": []}', "'objectives' is empty"),
    ('{"proposals": []}', "unknown top-level key"),
    ('{"objectives": [{"shape": "mpo", "g": "z"}]} {"objectives": []}', "extra data"),
    ('{"objectives": [{"shape": "mpo", "g": "z", "constants": {"beta": ' + "9" * 5000 + "}}]}", "malformed JSON"),
    ("x" * (llm_parse.MAX_ANSWER_CHARS + 1), "longer than the limit"),
])
def test_malformed_answers_are_rejected_whole(text, reason):
    candidates, rejections = parse(text)
    assert candidates == []
    assert len(rejections) == 1 and reason in rejections[0][1]
    assert len(rejections[0][0]) <= llm_parse.SNIPPET_CHARS


@pytest.mark.parametrize("text, shape, n", [
    (answer(DPO, HINGE), "wrapper", 2),
    ('Here is one: {"name": "hinge-ish", "loss": "relu(1 - beta*(logp_w - ref_w - logp_l + ref_l))"} ok?', "bare", 1),
    ('```json\n{"g": "-logsigmoid(z)", "constants": {"beta": 0.2}}\n```', "bare", 1),
    (json.dumps([DPO, HINGE]), "list", 2),
    ("no json", None, 0),
])
def test_bare_objects_and_lists_are_accepted_and_their_layout_recorded(text, shape, n):
    parsed = llm_parse.read_answer(text, validate=False)
    assert parsed.shape == shape and len(parsed.candidates) == n
    assert parsed.rejections == ([] if n else parsed.rejections)
    if shape == "bare":  # the shape is taken from the keys: "loss" free, else mpo
        assert parsed.candidates[0].objective.shape == ("free" if "loss" in text else "mpo")


def test_two_bare_objects_are_not_silently_cut_to_one():
    candidates, rejections = parse('{"loss": "softplus(logp_l - logp_w)"}\n{"g": "-logsigmoid(z)"}')
    assert candidates == [] and "extra data" in rejections[0][1]


def test_control_characters_never_reach_a_snippet():
    _, rejections = parse(answer({"shape": "mpo", "g": "\x1b[2Jfoo(z)"}))
    assert "\x1b" not in rejections[0][0]


def test_non_text_answer_is_rejected():
    assert "not text" in parse(None)[1][0][1]


@pytest.mark.parametrize("item, reason", [
    ({"shape": "free", "loss": "__import__('os').system('rm -rf /')"}, "only plain function names"),
    ({"shape": "free", "loss": "__import__('os')"}, "unknown function '__import__'"),
    ({"shape": "mpo", "g": "eval('1+1')"}, "unknown function 'eval'"),
    ({"shape": "mpo", "g": "exec('import os')"}, "unknown function 'exec'"),
    ({"shape": "mpo", "g": "z.__class__"}, "attribute access"),
    ({"shape": "mpo", "g": "(lambda: z)()"}, "only plain function names"),
    ({"shape": "mpo", "g": "foo(z)"}, "unknown function 'foo'"),
    ({"shape": "mpo", "g": "-logsigmoid(x)"}, "unknown name 'x'"),
    ({"shape": "mpo", "g": "-logsigmoid(logp_w)"}, "unknown name 'logp_w' in g"),
    ({"shape": "mpo", "g": "z**100"}, "exponent 100 is outside"),
    ({"shape": "mpo", "g": "z**1e300"}, "outside"),
    ({"shape": "mpo", "g": "1e400*z"}, "outside"),
    ({"shape": "mpo", "g": "z ^ 2"}, "not a power"),
    ({"shape": "mpo", "g": "z if z else 1"}, "IfExp is not allowed"),
    ({"shape": "mpo", "g": "-z", "phi_inv": "phi_inv(u)"}, "phi_inv(...) may only be used in psi"),
    ({"shape": "mpo", "g": 1}, "expressions must be JSON strings"),
    ({"shape": "mpo"}, "missing 'g'"),
    ({"shape": "free", "g": "-z"}, "unknown key(s) 'g' for shape 'free'"),
    ({"shape": "mpo", "g": "-z", "code": "import os"}, "unknown key(s) 'code'"),
    ({"shape": "dpo", "g": "-z"}, "'shape' must be"),
    ({"rationale": "no expression"}, "cannot tell the shape"),
    ({"shape": "mpo", "g": "-z", "constants": {"beta": 99}}, "constant beta = 99 is outside its range"),
    ({"shape": "mpo", "g": "-z", "constants": {"beta": 10 ** 400}}, "outside its range"),
    ({"shape": "mpo", "g": "-z", "constants": {"kappa": 1}}, "unknown constant 'kappa'"),
    ({"shape": "mpo", "g": "-z", "constants": {"beta": "0.1"}}, "must be a number"),
    ({"shape": "mpo", "g": "-z", "constants": {"beta": True}}, "must be a number"),
    ({"shape": "mpo", "g": "-z", "constants": [0.1]}, "'constants' must be an object"),
    ({"shape": "mpo", "g": "-z", "rationale": ["a"]}, "'rationale' must be a string"),
    ("softplus(-z)", "must be a JSON object"),
])
def test_disallowed_items_are_rejected_with_reasons(item, reason):
    candidates, rejections = parse(answer(DPO, item, HINGE))
    assert [c.objective.name for c in candidates] == ["llm-1", "llm-3"]  # the good ones survive
    assert len(rejections) == 1
    snippet, why = rejections[0]
    assert why.startswith("objective 2: ") and reason in why, why


def test_number_blowup_is_refused_before_sympy_folds_it():
    # ((999999**4)**4)... folds to an exact integer with 6 * 4**k digits inside the grammar parser:
    # k = 12 would take minutes and gigabytes.  The screen reads only the syntax tree.
    text = "999999"
    for _ in range(12):
        text = f"({text})**4"
    start = time.perf_counter()
    candidates, rejections = parse(answer({"shape": "mpo", "g": f"{text}*-z"},
                                          {"shape": "mpo", "g": f"pow(pow(pow({text}, 4), 4), 4)*-z"}))
    assert time.perf_counter() - start < 1.0
    assert candidates == [] and len(rejections) == 2
    assert all("digits" in why for _, why in rejections)
    # ordinary literal arithmetic is untouched
    assert parse(answer({"shape": "mpo", "g": "(0.5*z - 1)**4*0.001 - 3*z/7 + pow(2.5, 3)"}))[1] == []


def test_item_limit_and_rationale_truncation():
    items = [dict(DPO, rationale="r" * 2000)] * (MAX_OBJECTIVES + 2)
    candidates, rejections = parse(answer(*items))
    assert len(candidates) == MAX_OBJECTIVES
    assert len(candidates[0].rationale) == MAX_RATIONALE_CHARS
    assert rejections == [(rejections[0][0], f"objectives {MAX_OBJECTIVES + 1}-{MAX_OBJECTIVES + 2}: beyond the "
                                             f"limit of {MAX_OBJECTIVES} objectives per answer")]


def test_max_complexity():
    big = {"shape": "mpo", "g": "softplus(-z) + relu(gamma - z)*tau + softplus(-z*beta - 1)*lam"}
    candidates, rejections = parse(answer(DPO, big), max_complexity=30)
    assert [c.objective.name for c in candidates] == ["llm-1"]
    assert "complexity" in rejections[0][1] and "exceeds the limit 30" in rejections[0][1]


def test_nothing_is_evaluated(monkeypatch):
    """The parser walks the syntax tree: eval, exec and sympify are never called."""
    def forbidden(*a, **k):
        raise AssertionError("eval/exec/sympify called")

    monkeypatch.setattr(builtins, "eval", forbidden)
    monkeypatch.setattr(builtins, "exec", forbidden)
    monkeypatch.setattr(sympy, "sympify", forbidden)
    monkeypatch.setattr(sympy, "parse_expr", forbidden, raising=False)
    candidates, rejections = parse(answer(DPO, HINGE, {"shape": "free", "loss": "__import__('os')"}))
    assert len(candidates) == 2 and "unknown function '__import__'" in rejections[0][1]


def test_validity_check_rejects_non_monotone_and_accepts_the_template_example():
    """One validated parse (the JAX-compiled check: ~5 s): the answer example shown in the prompt template is valid,
    and an increasing g is rejected with the validity checker's reason."""
    _, user = split_template(prompts.load("propose_v1"))
    example = re.search(r"```json\n(.*?)```", user, re.DOTALL).group(1)
    text = example.replace("]}", ', {"shape": "mpo", "g": "z"}]}')
    candidates, rejections = parse_candidates(text, validate=True)
    assert [c.objective.shape for c in candidates] == ["mpo", "free"]
    assert len(rejections) == 1
    assert rejections[0][1].startswith("objective 3: invalid: g must be non-increasing")
