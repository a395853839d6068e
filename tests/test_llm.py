"""The LLM proposer through the real `openai` / `anthropic` SDK clients, with a fake HTTP transport.

Every test builds the SDK's own client on an HTTP client whose transport is `MockTransport(handler)`: the
requests the SDK really sends are checked, and the handler answers like the API (or fails like it).  No
network, no real sleeping (the backoff `sleep` is a recorder).
"""
import dataclasses
import json
import socket
import time

import re

import pytest

try:  # the openai >= 3 / anthropic >= 2 SDKs are built on httpx2 (the httpx API under a new name)
    import httpx2 as httpx
except ImportError:  # pragma: no cover - older SDKs use httpx
    import httpx

from discovery.llm import (
    DEFAULT_MODELS, Exchange, LLMConfig, LLMProposer, PLACEHOLDER_KEY, Proposal, llm_available,
)
from discovery.llm_prompt import PromptContext, render_prompt

GOOD = {"objectives": [
    {"shape": "mpo", "g": "-logsigmoid(z)", "constants": {"beta": 0.2}, "rationale": "DPO with a larger beta"},
    {"shape": "free", "loss": "relu(1 - beta*(logp_w - ref_w - logp_l + ref_l))", "rationale": "hinge"},
]}
GOOD_TEXT = json.dumps(GOOD)
CONTEXT = PromptContext(
    task="hopper", dataset="medium-noisy",
    elites=[{"name": "elite-7", "formula": "softplus(-z)", "fitness": 71.5, "ci": 2.0,
             "descriptors": {"sharpness": 0.25}}],
    inspirations=[{"name": "odd-3", "formula": "relu(1 - z)", "fitness": 40.0, "descriptors": {"sharpness": 2.0}}],
    rejections=[("{\"g\": \"z\"}", "objective 1: invalid: g must be non-increasing in the margin")],
    best_baseline=("dpo", 58.3),
)


# ------------------------------------------------------------------------------------ fake endpoints
def openai_reply(content, prompt_tokens=1000, completion_tokens=200, finish="stop"):
    return httpx.Response(200, json={
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens}})


def anthropic_reply(text, input_tokens=1000, output_tokens=200):
    return httpx.Response(200, json={
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-haiku-4-5",
        "content": [{"type": "text", "text": text}], "stop_reason": "end_turn", "stop_sequence": None,
        "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens}})


def status(code, headers=None):
    return httpx.Response(code, json={"error": {"message": f"status {code}", "type": "error"}}, headers=headers)


def timeout(request):
    raise httpx.ReadTimeout("timed out", request=request)


def refused(request):
    raise httpx.ConnectError("[Errno 111] Connection refused", request=request)


class Endpoint:
    """The transport's handler: answers with the scripted steps in order (the last one repeats) and keeps
    every request."""

    def __init__(self, *steps):
        self.steps = list(steps)
        self.requests: list = []

    def __call__(self, request):
        self.requests.append(request)
        step = self.steps.pop(0) if len(self.steps) > 1 else self.steps[0]
        return step(request) if callable(step) else step

    def body(self, i=-1) -> dict:
        return json.loads(self.requests[i].content)


@pytest.fixture(autouse=True)
def keys(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai-test")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
    for name in ("OPENAI_BASE_URL", "ANTHROPIC_BASE_URL", "OPENAI_ORG_ID", "OPENAI_PROJECT_ID"):
        monkeypatch.delenv(name, raising=False)


def proposer(endpoint, **cfg):
    """A proposer on the real SDK client over the fake transport; returns it and the recorded waits."""
    cfg.setdefault("check_validity", False)  # the JAX validity check is tested in test_llm_parse
    waits: list[float] = []
    p = LLMProposer(LLMConfig(**cfg), http_client=httpx.Client(transport=httpx.MockTransport(endpoint)),
                    sleep=waits.append)
    return p, waits


def names(proposal: Proposal) -> list[str]:
    return [c.objective.name for c in proposal.candidates]


# --------------------------------------------------------------------------------------- good answers
def test_openai_good_answer():
    endpoint = Endpoint(openai_reply(GOOD_TEXT))
    p, waits = proposer(endpoint)
    proposal = p.propose(CONTEXT)
    assert names(proposal) == ["llm1-1", "llm1-2"] and proposal.rejections == []
    assert [c.rationale for c in proposal.candidates] == ["DPO with a larger beta", "hinge"]
    assert dict(proposal.candidates[0].objective.constants) == {"beta": 0.2}
    request = endpoint.requests[0]
    assert request.method == "POST" and str(request.url) == "https://api.openai.com/v1/chat/completions"
    assert request.headers["authorization"] == "Bearer sk-openai-test"
    body = endpoint.body()
    rendered = render_prompt(CONTEXT, "propose_v1", n_wanted=4)
    assert body["model"] == "gpt-4o-mini" and body["temperature"] == 0.8
    assert body["messages"] == [{"role": "system", "content": rendered.system},
                                {"role": "user", "content": rendered.prompt}]
    assert 0 < body["max_completion_tokens"] <= 4096
    ex = proposal.exchange
    assert (ex.proposer, ex.model, ex.prompt_version) == ("llm/openai", "gpt-4o-mini", "propose_v1")
    assert (ex.system, ex.prompt, ex.answer, ex.error) == (rendered.system, rendered.prompt, GOOD_TEXT, None)
    assert ex.usage == {"prompt_tokens": 1000, "completion_tokens": 200, "total_tokens": 1200,
                        "stop_reason": "stop", "attempts": 1}
    assert ex.seconds >= 0 and proposal.attempts == 1
    assert (p.calls, p.tokens, p.retries, waits, p.exhausted) == (1, 1200, 0, [], False)


def test_anthropic_good_answer():
    endpoint = Endpoint(anthropic_reply(GOOD_TEXT, 900, 100))
    p, _ = proposer(endpoint, provider="anthropic")
    proposal = p.propose(CONTEXT)
    assert names(proposal) == ["llm1-1", "llm1-2"] and proposal.rejections == []
    request = endpoint.requests[0]
    assert str(request.url) == "https://api.anthropic.com/v1/messages"
    assert "sk-ant-test" in (request.headers.get("x-api-key", "") + request.headers.get("authorization", ""))
    body = endpoint.body()
    rendered = render_prompt(CONTEXT)
    assert body["model"] == DEFAULT_MODELS["anthropic"] and body["system"] == rendered.system
    assert body["messages"] == [{"role": "user", "content": rendered.prompt}] and body["max_tokens"] > 0
    assert proposal.exchange.model == DEFAULT_MODELS["anthropic"] and proposal.exchange.proposer == "llm/anthropic"
    assert proposal.exchange.usage["total_tokens"] == 1000 and p.tokens == 1000


def test_request_carries_the_rendered_prompt():
    endpoint = Endpoint(openai_reply(GOOD_TEXT))
    p, _ = proposer(endpoint, n_wanted=3)
    p.propose(CONTEXT)
    user = endpoint.body()["messages"][1]["content"]
    assert user == render_prompt(CONTEXT, n_wanted=3).prompt
    assert "# The grammar" in user and "logsigmoid(x)" in user and "# Constraints" in user
    assert "1. elite-7 fitness 71.5 ± 2 | sharpness=0.25" in user and "softplus(-z)" in user
    assert "1. odd-3 fitness 40 | sharpness=2" in user
    assert "objective 1: invalid: g must be non-increasing in the margin" in user
    assert "Best baseline: dpo, fitness 58.3" in user and "Propose 3 new objectives" in user


def test_fenced_answer_with_prose():
    text = f"Here are four ideas {{briefly}}:\n\n```json\n{json.dumps(GOOD, indent=2)}\n```\nGood luck!"
    p, _ = proposer(Endpoint(openai_reply(text)))
    proposal = p.propose(CONTEXT)
    assert names(proposal) == ["llm1-1", "llm1-2"] and proposal.rejections == []


# ------------------------------------------------------------------------------------- bad answers
@pytest.mark.parametrize("text, reason", [
    ('{"objectives": [{"shape": "mpo", "g": "-z",}]}', "malformed JSON"),
    ("{'objectives': [{'shape': 'mpo', 'g': '-z'}]}", "malformed JSON"),
    ("I'm sorry, I can't help with that.", "no JSON object"),
    ("", "empty answer"),
])
def test_malformed_answer_is_recorded_and_rejected(text, reason):
    p, _ = proposer(Endpoint(openai_reply(text), openai_reply(GOOD_TEXT)))
    proposal = p.propose(CONTEXT)
    assert proposal.candidates == [] and len(proposal.rejections) == 1 and reason in proposal.rejections[0][1]
    ex = proposal.exchange
    assert ex.answer == text and ex.error == f"answer rejected: {proposal.rejections[0][1]}"  # recorded with its reason
    assert ex.rejections == proposal.rejections and ex.answer_shape is None
    assert p.failures == 0 and not p.exhausted  # a call that worked
    assert names(p.propose(CONTEXT)) == ["llm2-1", "llm2-2"]  # the next call goes on


def test_disallowed_expressions_are_rejected_with_reasons():
    items = [
        {"shape": "free", "loss": "__import__('os').system('echo pwned')"},
        {"shape": "free", "loss": "__import__('os')"},
        {"shape": "mpo", "g": "eval('-z')"},
        {"shape": "mpo", "g": "-logsigmoid(zz)"},
        {"shape": "mpo", "g": "z**100"},
        {"shape": "mpo", "g": "((((((((((999999**4)**4)**4)**4)**4)**4)**4)**4)**4)**4)**4 * -z"},
        GOOD["objectives"][0],
    ]
    p, _ = proposer(Endpoint(openai_reply(json.dumps({"objectives": items}))))
    proposal = p.propose(CONTEXT)
    assert names(proposal) == ["llm1-7"]
    reasons = [why for _, why in proposal.rejections]
    assert [r.split(":")[0] for r in reasons] == [f"objective {i}" for i in range(1, 7)]
    for reason, expected in zip(reasons, ["only plain function names", "unknown function '__import__'",
                                          "unknown function 'eval'", "unknown name 'zz'",
                                          "exponent 100 is outside", "digits"]):
        assert expected in reason
    snippets = [s for s, _ in proposal.rejections]
    assert "__import__('os')" in snippets[1] and "eval" in snippets[2]


# -------------------------------------------------------------------------------- endpoint problems
def test_rate_limit_then_success_retries_with_backoff():
    endpoint = Endpoint(status(429), status(429, {"retry-after": "2"}), openai_reply(GOOD_TEXT))
    p, waits = proposer(endpoint, backoff_s=0.5)
    proposal = p.propose(CONTEXT)
    assert names(proposal) == ["llm1-1", "llm1-2"] and proposal.exchange.error is None
    assert len(endpoint.requests) == 3 and proposal.attempts == 3 and proposal.exchange.usage["attempts"] == 3
    assert waits == [0.5, 2.0]  # exponential backoff, then the server's Retry-After
    assert (p.calls, p.attempts, p.retries, p.failures) == (1, 3, 2, 0)


def test_persistent_rate_limit_gives_an_error_exchange():
    endpoint = Endpoint(status(429, {"retry-after": "1000"}))
    p, waits = proposer(endpoint, max_retries=3, max_backoff_s=30.0)
    proposal = p.propose(CONTEXT)
    assert proposal.candidates == [] and proposal.rejections == []
    ex = proposal.exchange
    assert ex.answer is None and "429" in ex.error and "after 4 attempts" in ex.error
    assert ex.usage == {"attempts": 4} and ex.prompt == render_prompt(CONTEXT).prompt
    assert len(endpoint.requests) == 4 and waits == [30.0, 30.0, 30.0]  # Retry-After capped
    assert p.calls == 1 and p.tokens == 0 and not p.exhausted


def test_backoff_doubles():
    p, waits = proposer(Endpoint(status(503)), max_retries=4, backoff_s=1.0, max_backoff_s=5.0)
    assert "HTTP 503" in p.propose(CONTEXT).exchange.error
    assert waits == [1.0, 2.0, 4.0, 5.0]


def test_timeout_gives_an_error_exchange():
    endpoint = Endpoint(timeout)
    p, waits = proposer(endpoint, max_retries=2, timeout_s=7.0)
    proposal = p.propose(CONTEXT)
    assert proposal.candidates == [] and proposal.exchange.answer is None
    assert proposal.exchange.error.startswith("timeout after 7 s") and "after 3 attempts" in proposal.exchange.error
    assert len(endpoint.requests) == 3 and len(waits) == 2


def test_timeout_setting_reaches_the_request():
    endpoint = Endpoint(openai_reply(GOOD_TEXT))
    p, _ = proposer(endpoint, timeout_s=7.0)
    p.propose(CONTEXT)
    assert 6.5 < endpoint.requests[0].extensions["timeout"]["read"] <= 7.0  # what is left of the call's deadline


class Drip:
    """A response body that arrives one byte every `every` seconds (each read well within any read timeout)."""

    def __init__(self, body: bytes, every: float):
        self.body, self.every, self.stopped = body, every, False

    def __iter__(self):
        for i in range(len(self.body)):
            if self.stopped:
                return
            time.sleep(self.every)
            yield self.body[i:i + 1]


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_a_dripping_endpoint_is_cut_at_the_wall_clock_deadline(provider):
    reply = (openai_reply if provider == "openai" else anthropic_reply)(GOOD_TEXT)
    drip = Drip(reply.content, every=0.05)  # ~2000 bytes: 100 s in all
    endpoint = Endpoint(lambda request: httpx.Response(200, headers={"content-type": "application/json"},
                                                       content=iter(drip)))
    p, waits = proposer(endpoint, provider=provider, timeout_s=1.0, max_retries=3)
    start = time.monotonic()
    try:
        proposal = p.propose(CONTEXT)
    finally:
        drip.stopped = True
    assert time.monotonic() - start < 2.5
    assert proposal.candidates == [] and proposal.exchange.error.startswith("timeout after 1 s")
    assert len(endpoint.requests) == 1 and waits == []  # no time was left for a retry


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_server_error_gives_an_error_exchange(provider):
    endpoint = Endpoint(status(500))
    p, waits = proposer(endpoint, provider=provider, max_retries=1)
    proposal = p.propose(CONTEXT)
    assert proposal.candidates == [] and "HTTP 500" in proposal.exchange.error
    assert len(endpoint.requests) == 2 and len(waits) == 1


def test_connection_refused_gives_an_error_exchange():
    endpoint = Endpoint(refused)
    p, waits = proposer(endpoint, max_retries=1)
    proposal = p.propose(CONTEXT)
    assert proposal.candidates == [] and proposal.exchange.error.startswith("connection error")
    assert len(endpoint.requests) == 2


def test_dead_endpoint_is_given_up_after_max_failures():
    endpoint = Endpoint(refused)
    p, _ = proposer(endpoint, max_retries=0, max_failures=2)
    assert p.propose(CONTEXT).exchange.error.startswith("connection error") and not p.exhausted
    assert p.propose(CONTEXT).exchange.error.startswith("connection error") and p.exhausted
    proposal = p.propose(CONTEXT)  # no request any more
    assert len(endpoint.requests) == 2 and "gave up" in proposal.exchange.error and proposal.exchange.usage is None
    assert p.calls == 2


def test_a_real_refused_connection(monkeypatch):
    """The default SDK client (no http_client) against a local port nobody listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    p = LLMProposer(LLMConfig(provider="openai-compatible", base_url=f"http://127.0.0.1:{port}/v1", max_retries=1,
                              timeout_s=5.0, check_validity=False), sleep=lambda s: None)
    proposal = p.propose(CONTEXT)
    assert proposal.candidates == [] and proposal.exchange.error.startswith("connection error")
    p.close()


def test_bad_key_is_not_retried_and_gives_up():
    endpoint = Endpoint(status(401))
    p, waits = proposer(endpoint)
    proposal = p.propose(CONTEXT)
    assert "HTTP 401" in proposal.exchange.error and len(endpoint.requests) == 1 and waits == []
    assert p.exhausted and "401" in p.gave_up


def test_bad_request_is_not_retried_but_the_run_goes_on():
    endpoint = Endpoint(status(400), openai_reply(GOOD_TEXT))
    p, waits = proposer(endpoint)
    assert "HTTP 400" in p.propose(CONTEXT).exchange.error and waits == [] and not p.exhausted
    assert names(p.propose(CONTEXT)) == ["llm2-1", "llm2-2"]


@pytest.mark.parametrize("provider, response", [
    ("openai", httpx.Response(200, json={"unexpected": True})),
    ("anthropic", httpx.Response(200, text="<html>502 bad gateway</html>", headers={"content-type": "text/html"})),
])
def test_garbage_response_body_is_an_error_not_a_crash(provider, response):
    endpoint = Endpoint(response)
    p, waits = proposer(endpoint, provider=provider)
    proposal = p.propose(CONTEXT)
    assert proposal.candidates == [] and proposal.exchange.error.startswith("unexpected response")
    assert len(endpoint.requests) == 1 and waits == [] and p.failures == 1


def test_missing_key_gives_up_without_a_request(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY")
    endpoint = Endpoint(openai_reply(GOOD_TEXT))
    p, _ = proposer(endpoint)
    proposal = p.propose(CONTEXT)
    assert proposal.exchange.error == "no OPENAI_API_KEY set" and endpoint.requests == []
    assert p.exhausted and p.calls == 0


# ------------------------------------------------------------------------------------------- budget
def test_call_budget():
    endpoint = Endpoint(openai_reply(GOOD_TEXT))
    p, _ = proposer(endpoint, max_calls=2)
    assert names(p.propose(CONTEXT)) and not p.exhausted
    assert names(p.propose(CONTEXT)) and p.exhausted
    proposal = p.propose(CONTEXT)
    assert proposal.candidates == [] and "call budget exhausted (2/2 calls)" in proposal.exchange.error
    assert proposal.exchange.usage is None and len(endpoint.requests) == 2 and p.calls == 2


def test_token_budget():
    endpoint = Endpoint(openai_reply(GOOD_TEXT, prompt_tokens=30_000, completion_tokens=5_000))
    p, _ = proposer(endpoint, max_tokens=60_000)
    p.propose(CONTEXT)
    assert p.tokens == 35_000 and not p.exhausted
    assert endpoint.body()["max_completion_tokens"] == 4096
    p.propose(CONTEXT)
    assert p.tokens == 70_000 and p.exhausted
    assert "token budget exhausted" in p.propose(CONTEXT).exchange.error and len(endpoint.requests) == 2


def test_budget_is_per_run_across_resumes():
    p, _ = proposer(Endpoint(openai_reply(GOOD_TEXT)), max_calls=3, max_tokens=10_000)
    earlier = [{"usage": {"total_tokens": 1200, "attempts": 1}}, {"usage": '{"attempts": 4}'},
               {"usage": None, "error": "call budget exhausted"}]
    p.restore_budget(earlier)
    assert (p.calls, p.tokens, p.exhausted) == (2, 1200, False)
    assert names(p.propose(CONTEXT)) == ["llm3-1", "llm3-2"] and p.exhausted


def test_token_budget_caps_the_answer_and_refuses_a_prompt_that_cannot_fit():
    size = len(render_prompt(CONTEXT).system + render_prompt(CONTEXT).prompt) // 4
    endpoint = Endpoint(openai_reply(GOOD_TEXT, prompt_tokens=size, completion_tokens=100))
    p, _ = proposer(endpoint, max_tokens=size + 1000)
    p.propose(CONTEXT)
    assert endpoint.body()["max_completion_tokens"] <= 1000
    proposal = p.propose(CONTEXT)  # ~900 tokens left: less than the prompt
    assert "token budget" in proposal.exchange.error and p.exhausted and len(endpoint.requests) == 1


# -------------------------------------------------------------------------------------------- replay
def test_replay_reproduces_candidates_without_any_transport(monkeypatch):
    bad = json.dumps({"objectives": [{"shape": "mpo", "g": "eval('z')"}, GOOD["objectives"][1]]})
    endpoint = Endpoint(openai_reply(GOOD_TEXT), status(500), openai_reply(bad), openai_reply("nonsense"))
    live, _ = proposer(endpoint, max_retries=0, max_calls=4)
    originals = [live.propose(CONTEXT) for _ in range(5)]  # the 5th is refused: budget
    stored = [{"id": i, "run_id": 1, **dataclasses.asdict(p.exchange)} for i, p in enumerate(originals)]
    stored = json.loads(json.dumps(stored))  # as they come back from the archive

    monkeypatch.delenv("OPENAI_API_KEY")  # no key, no client, no transport

    def no_network(*args, **kwargs):
        raise AssertionError("replay must not touch the network")

    monkeypatch.setattr(httpx.Client, "send", no_network)
    replay = LLMProposer(LLMConfig(max_retries=0, max_calls=4, check_validity=False), replay=stored, sleep=no_network)
    replayed = []
    while not replay.exhausted:
        replayed.append(replay.propose(CONTEXT))
    assert len(replayed) == 5 and replay._client is None
    for a, b in zip(originals, replayed):
        assert [c.objective.to_dict() for c in a.candidates] == [c.objective.to_dict() for c in b.candidates]
        assert [c.rationale for c in a.candidates] == [c.rationale for c in b.candidates]
        assert a.rejections == b.rejections
        assert dataclasses.asdict(a.exchange) == dataclasses.asdict(b.exchange)
    assert names(replayed[2]) == ["llm3-2"] and "unknown function 'eval'" in replayed[2].rejections[0][1]
    assert (replay.calls, replay.tokens, replay.replay_mismatches) == (live.calls, live.tokens, 0)
    after = replay.propose(CONTEXT)
    assert "replay exhausted" in after.exchange.error


def test_replay_notices_a_different_prompt():
    p, _ = proposer(Endpoint(openai_reply(GOOD_TEXT)))
    stored = [dataclasses.asdict(p.propose(CONTEXT).exchange)]
    replay = LLMProposer(LLMConfig(check_validity=False), replay=stored)
    proposal = replay.propose(dataclasses.replace(CONTEXT, task="walker2d"))
    assert names(proposal) == ["llm1-1", "llm1-2"] and replay.replay_mismatches == 1


def test_replay_rejects_incomplete_records():
    with pytest.raises(ValueError, match="lacks"):
        LLMProposer(LLMConfig(), replay=[{"answer": GOOD_TEXT}])
    record = dataclasses.asdict(Exchange("llm/openai", "m", "propose_v1", "s", "p", "a", None, None, 1.0))
    record.update(id=7, run_id=1, usage='{"total_tokens": 3}')  # usage as JSON text, extra keys ignored
    assert Exchange.from_dict(record).usage == {"total_tokens": 3}


# ------------------------------------------------------------------------- providers, availability
@pytest.mark.parametrize("key, sent", [("sk-openai-test", "sk-openai-test"), (None, PLACEHOLDER_KEY)])
def test_openai_compatible_base_url_is_honoured_and_openai_key_used_when_set(key, sent, monkeypatch):
    if key is None:
        monkeypatch.delenv("OPENAI_API_KEY")
    endpoint = Endpoint(openai_reply(GOOD_TEXT))
    p, _ = proposer(endpoint, provider="openai-compatible", base_url="http://gpu-box:8000/v1", model="qwen2.5-7b",
                    temperature=None)
    proposal = p.propose(CONTEXT)
    assert names(proposal) == ["llm1-1", "llm1-2"]
    request = endpoint.requests[0]
    assert str(request.url) == "http://gpu-box:8000/v1/chat/completions"
    assert request.headers["authorization"] == f"Bearer {sent}"
    body = endpoint.body()
    assert body["model"] == "qwen2.5-7b" and "max_tokens" in body and "temperature" not in body
    assert proposal.exchange.proposer == "llm/openai-compatible"


def test_openai_compatible_with_a_key_and_without_usage(monkeypatch):
    monkeypatch.setenv("OLLAMA_KEY", "secret-1")
    reply = openai_reply(GOOD_TEXT)
    data = json.loads(reply.content)
    del data["usage"]
    endpoint = Endpoint(httpx.Response(200, json=data))
    p, _ = proposer(endpoint, provider="openai-compatible", base_url="http://localhost:11434/v1/",
                    api_key_env="OLLAMA_KEY", model="llama3.1")
    proposal = p.propose(CONTEXT)
    assert str(endpoint.requests[0].url) == "http://localhost:11434/v1/chat/completions"
    assert endpoint.requests[0].headers["authorization"] == "Bearer secret-1"
    assert proposal.exchange.usage["estimated"] is True and p.tokens == proposal.exchange.usage["total_tokens"] > 0


def test_openai_base_url_override():
    endpoint = Endpoint(openai_reply(GOOD_TEXT))
    p, _ = proposer(endpoint, base_url="https://proxy.example/v1")
    p.propose(CONTEXT)
    assert str(endpoint.requests[0].url) == "https://proxy.example/v1/chat/completions"
    assert endpoint.requests[0].headers["authorization"] == "Bearer sk-openai-test"


def test_llm_available(monkeypatch):
    assert llm_available(LLMConfig())[0]
    assert llm_available(LLMConfig(provider="anthropic"))[0]
    monkeypatch.delenv("OPENAI_API_KEY")
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    assert llm_available(LLMConfig()) == (False, "no OPENAI_API_KEY set")
    assert llm_available(LLMConfig(provider="anthropic")) == (False, "no ANTHROPIC_API_KEY set")
    assert llm_available(LLMConfig(api_key_env="MY_KEY")) == (False, "no MY_KEY set")
    ok, why = llm_available(LLMConfig(provider="openai-compatible"))
    assert not ok and "base_url" in why
    assert llm_available(LLMConfig(provider="openai-compatible", base_url="http://localhost:8000/v1"))[0]
    assert not llm_available(LLMConfig(provider="openai-compatible", base_url="http://x/v1", max_calls=0))[0]
    assert not llm_available(LLMConfig(provider="openai-compatible", base_url="http://x/v1",
                                       prompt_version="propose_v9"))[0]


def test_config_validation_names_the_option():
    for cfg, message in ((LLMConfig(provider="gemini"), "--llm-provider: unknown provider 'gemini'"),
                         (LLMConfig(max_calls=-1), "--llm-max-calls"), (LLMConfig(timeout_s=0), "--llm-timeout"),
                         (LLMConfig(timeout_s=float("nan")), "--llm-timeout"),
                         (LLMConfig(provider="openai-compatible"), "--llm-base-url"),
                         (LLMConfig(base_url="localhost:8000"), "--llm-base-url"),
                         (LLMConfig(max_retries=-1), "LLMConfig.max_retries")):
        with pytest.raises(ValueError, match=re.escape(message)):
            cfg.validate()
    with pytest.raises(ValueError, match="unknown prompt version"):
        LLMProposer(LLMConfig(prompt_version="propose_v9"))
    assert LLMConfig(provider="anthropic").resolved_model == DEFAULT_MODELS["anthropic"]
    assert LLMConfig(provider="anthropic", model="claude-opus-4-5").resolved_model == "claude-opus-4-5"


# ------------------------------------------------------------------------------ a hostile endpoint
def test_anthropic_base_url_ending_in_v1_is_the_server_root():
    endpoint = Endpoint(anthropic_reply(GOOD_TEXT))
    p, _ = proposer(endpoint, provider="anthropic", base_url="http://claude-proxy:8080/v1/")
    assert names(p.propose(CONTEXT)) == ["llm1-1", "llm1-2"]
    assert str(endpoint.requests[0].url) == "http://claude-proxy:8080/v1/messages"


def test_negative_usage_counts_cannot_disable_the_token_budget():
    endpoint = Endpoint(openai_reply(GOOD_TEXT, prompt_tokens=-3_000_000_000, completion_tokens=-3_000_000_000))
    p, _ = proposer(endpoint, max_tokens=10_000)
    proposal = p.propose(CONTEXT)
    assert proposal.exchange.usage["total_tokens"] == 0 and p.tokens == 0
    p.restore_budget([{"usage": {"total_tokens": -6e9}}, {"usage": {"total_tokens": 4000}}])
    assert p.tokens == 4000


def test_a_huge_answer_is_stored_cut_and_refused_the_same_way_on_replay():
    huge = GOOD_TEXT + " " * 2_000_000
    p, _ = proposer(Endpoint(openai_reply(huge)))
    proposal = p.propose(CONTEXT)
    ex = proposal.exchange
    assert len(ex.answer) < 100_200 and "cut: the answer had" in ex.answer
    assert proposal.candidates == [] and "longer than the limit" in ex.error
    replayed = LLMProposer(LLMConfig(check_validity=False), replay=[ex.to_dict()]).propose(CONTEXT)
    assert replayed.rejections == proposal.rejections and replayed.exchange.error == ex.error


def test_terminal_escapes_in_an_error_body_are_removed():
    body = {"error": {"message": "\x1b[2J\x1b[31mpwned\x07 \u202egnp.exe", "type": "error"}}
    p, _ = proposer(Endpoint(httpx.Response(400, json=body)))
    error = p.propose(CONTEXT).exchange.error
    assert "pwned" in error and not any(ch in error for ch in "\x1b\x07\u202e")


def test_a_bare_object_answer_is_accepted_and_its_layout_recorded():
    bare = json.dumps({"name": "my-hinge", "loss": "relu(1 - beta*(logp_w - ref_w - logp_l + ref_l))"})
    p, _ = proposer(Endpoint(openai_reply(bare)))
    proposal = p.propose(CONTEXT)
    assert names(proposal) == ["llm1-1"] and proposal.exchange.answer_shape == "bare"
    assert proposal.exchange.error is None and proposal.exchange.rejections == []
    wrapped = proposer(Endpoint(openai_reply(GOOD_TEXT)))[0].propose(CONTEXT)
    assert wrapped.exchange.answer_shape == "wrapper"


def test_refused_proposals_are_kept_on_the_exchange_and_replayed():
    mixed = json.dumps({"objectives": [{"shape": "mpo", "g": "eval('z')"}, GOOD["objectives"][1]]})
    p, _ = proposer(Endpoint(openai_reply(mixed)))
    live = p.propose(CONTEXT)
    assert names(live) == ["llm1-2"] and live.exchange.error is None
    assert live.exchange.rejections == live.rejections and "unknown function 'eval'" in live.rejections[0][1]
    stored = json.loads(json.dumps(live.exchange.to_dict()))  # as the archive gives it back
    replayed = LLMProposer(LLMConfig(check_validity=False), replay=[stored]).propose(CONTEXT)
    assert dataclasses.asdict(replayed.exchange) == dataclasses.asdict(live.exchange)
