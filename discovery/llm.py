"""The LLM proposer: asks a chat model for new objectives, through the official `openai` / `anthropic` SDKs.

Providers:

* "openai"            `openai.OpenAI` (chat completions), key from `OPENAI_API_KEY`;
* "anthropic"         `anthropic.Anthropic` (messages), key from `ANTHROPIC_API_KEY`;
* "openai-compatible" `openai.OpenAI` pointed at `base_url` (vLLM, llama.cpp server, Ollama, LiteLLM...).
  The key comes from `api_key_env` when set, else the placeholder "EMPTY" is sent: the real
  `OPENAI_API_KEY` is never read for a third-party endpoint.

One `propose(context)` renders the versioned prompt (`discovery.llm_prompt`), makes one call, and parses
the answer with the grammar's safe parser (`discovery.llm_parse`; never eval/exec/sympify).  Robustness:

* retries are ours and bounded: the SDK clients are built with `max_retries=0`, and a call is tried at most
  `1 + max_retries` times on 429, timeouts, connection errors and 5xx (also 408/409), waiting
  `backoff_s * 2**k` (or the server's Retry-After), capped at `max_backoff_s`, through the injectable
  `sleep`.  Other 4xx are not retried; 401/403/404 (bad key, no access, unknown model) and a missing key
  make the proposer give up for the run, as do `max_failures` failed calls in a row (a dead endpoint);
* every request has the timeout `timeout_s`;
* a budget of `max_calls` calls and `max_tokens` tokens (prompt + completion, from the reported usage, or
  estimated at 4 characters a token when an endpoint reports none);
* `propose` never raises for endpoint or answer problems: it returns a `Proposal` with no candidates and an
  `Exchange` whose `error` says what happened, and `exhausted` turns True once the budget is spent or the
  proposer gave up, so the search carries on with its other proposers.

Every call gives one `Exchange` (system, prompt, answer or error, usage, seconds) for the archive
(`ArchiveStore.add_exchange(run_id, **dataclasses.asdict(exchange))`).  `usage` is None exactly when no
request was made (budget spent, gave up); otherwise it holds `attempts` and, after an answer,
`prompt_tokens`, `completion_tokens`, `total_tokens`, `stop_reason` (and `estimated` when the endpoint
reported no usage).  `LLMProposer(cfg, replay=store.exchanges(run_id))` answers from the stored exchanges, in
order, without any client: the same candidates, names and counters come back, so a run replays offline.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import prompts
from discovery.llm_parse import Candidate, Rejection, parse_candidates
from discovery.llm_prompt import PromptContext, RenderedPrompt, render_prompt

log = logging.getLogger(__name__)

PROVIDERS = ("openai", "anthropic", "openai-compatible")
DEFAULT_MODEL = "gpt-4o-mini"
DEFAULT_MODELS = {"openai": DEFAULT_MODEL, "anthropic": "claude-haiku-4-5", "openai-compatible": DEFAULT_MODEL}
DEFAULT_KEY_ENV = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY"}
PLACEHOLDER_KEY = "EMPTY"  # what vLLM / llama.cpp / Ollama accept when they need no key
CHARS_PER_TOKEN = 4  # token estimate when an endpoint reports no usage
MIN_OUTPUT_TOKENS = 256  # a call is not made when the token budget leaves less than this for the answer
RETRY_STATUSES = frozenset({408, 409, 429})  # and every status >= 500
GIVE_UP_STATUSES = frozenset({401, 403, 404})
MAX_ERROR_CHARS = 500


@dataclass(frozen=True)
class LLMConfig:
    provider: str = "openai"  # "openai" | "anthropic" | "openai-compatible"
    model: str = DEFAULT_MODEL  # left at the default with provider "anthropic": DEFAULT_MODELS["anthropic"]
    base_url: str | None = None  # required for "openai-compatible"; optional for the others
    api_key_env: str | None = None  # default OPENAI_API_KEY / ANTHROPIC_API_KEY; compatible: none needed
    timeout_s: float = 60.0  # per request
    max_retries: int = 3  # retries of one call (so at most 1 + max_retries requests)
    max_calls: int = 50  # per run
    max_tokens: int = 200_000  # per run: prompt + completion tokens
    temperature: float | None = 0.8  # None: not sent (models that only accept their default).  Not sent
    #                                  to Anthropic: `messages.create` of the anthropic SDK 2.x has no such argument
    prompt_version: str = "propose_v1"
    n_wanted: int = 4
    # additions
    max_output_tokens: int = 4096  # per call (capped by what is left of max_tokens)
    backoff_s: float = 1.0  # first retry waits this long, then twice as long each time
    max_backoff_s: float = 30.0  # cap on one wait, Retry-After included
    max_failures: int = 3  # failed calls in a row after which the proposer gives up for the run
    validate: bool = True  # run grammar.validity.check on each parsed objective (rejections say why)

    def __post_init__(self):
        if self.provider not in PROVIDERS:
            raise ValueError(f"unknown LLM provider {self.provider!r}; use one of {', '.join(PROVIDERS)}")
        for name in ("max_retries", "max_calls", "max_tokens", "max_output_tokens", "max_failures", "n_wanted"):
            if int(getattr(self, name)) != getattr(self, name) or getattr(self, name) < 0:
                raise ValueError(f"LLMConfig.{name} must be a non-negative integer, got {getattr(self, name)!r}")
        for name in ("timeout_s", "backoff_s", "max_backoff_s"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"LLMConfig.{name} must be a finite number >= 0, got {value!r}")

    @property
    def resolved_model(self) -> str:
        if self.provider == "anthropic" and self.model == DEFAULT_MODEL:
            return DEFAULT_MODELS["anthropic"]
        return self.model

    @property
    def key_env(self) -> str | None:
        """The environment variable the key is read from (None: a compatible endpoint without a key)."""
        return self.api_key_env or DEFAULT_KEY_ENV.get(self.provider)


def llm_available(cfg: LLMConfig) -> tuple[bool, str]:
    """Whether `cfg` can be used, and why not; looks at the configuration, the SDK and the environment
    only (no network call)."""
    sdk = "anthropic" if cfg.provider == "anthropic" else "openai"
    try:
        __import__(sdk)
    except ImportError:
        return False, f"the {sdk} package is not installed (pip install {sdk})"
    if cfg.provider == "openai-compatible" and not cfg.base_url:
        return False, "provider 'openai-compatible' needs base_url (e.g. http://localhost:8000/v1)"
    env = cfg.key_env
    if env is not None and not os.environ.get(env):
        return False, f"no {env} set"
    if cfg.max_calls == 0 or cfg.max_tokens == 0:
        return False, "the LLM budget is zero (max_calls or max_tokens)"
    try:
        prompts.load(cfg.prompt_version)
    except ValueError as e:
        return False, str(e)
    return True, f"{cfg.provider} {cfg.resolved_model} at {cfg.base_url or 'the default endpoint'}"


@dataclass
class Exchange:
    """One call (or one refused call), recorded in the archive whatever happened."""

    proposer: str
    model: str
    prompt_version: str
    system: str
    prompt: str
    answer: str | None
    error: str | None
    usage: dict | None
    seconds: float

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Exchange:
        """From a stored exchange (extra keys such as `id` or `run_id` are ignored)."""
        names = [f.name for f in dataclasses.fields(cls)]
        missing = [n for n in names if n not in data]
        if missing:
            raise ValueError(f"stored exchange lacks {', '.join(missing)}")
        values = {n: data[n] for n in names}
        if isinstance(values["usage"], str):
            values["usage"] = json.loads(values["usage"])
        values["seconds"] = float(values["seconds"] or 0.0)
        return cls(**values)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class Proposal:
    candidates: list[Candidate]  # parsed objectives (+ rationale), named f"llm{call}-{i}"
    rejections: list[Rejection]  # (snippet, reason) for each rejected item of the answer, or the whole answer
    exchange: Exchange
    attempts: int = 0  # requests made for this call (0: none, e.g. budget spent or replayed)


class _GiveUp(Exception):
    """A problem no retry or later call will fix (no key, bad key, unknown model)."""


class _BadResponse(Exception):
    """A response the SDK accepted but that holds no answer where one should be."""


class LLMProposer:
    """Proposes objectives with an LLM; see the module docstring."""

    def __init__(self, cfg: LLMConfig, *, client: Any = None, http_client: Any = None,
                 sleep: Callable[[float], Any] = time.sleep, replay: Sequence[Mapping[str, Any]] | None = None,
                 clock: Callable[[], float] = time.monotonic):
        """client: a ready SDK client (else one is built on the first call, with `http_client` when given);
        sleep: the backoff wait (tests pass a recorder); replay: stored exchanges answered in order
        instead of calling the API."""
        prompts.load(cfg.prompt_version)  # a bad template version is a configuration error: fail now
        self.cfg = cfg
        self.name = f"llm/{cfg.provider}"
        self._client = client
        self._owns_client = False
        self._http_client = http_client
        self._sleep = sleep
        self._clock = clock
        self._replay = None if replay is None else [Exchange.from_dict(d) for d in replay]
        self._replay_position = 0
        self.calls = 0  # calls that made at least one request
        self.tokens = 0  # prompt + completion tokens of those calls
        self.attempts = 0  # requests, retries included
        self.retries = 0
        self.failures = 0  # failed calls in a row
        self.gave_up: str | None = None  # why the proposer stopped calling, if it did
        self.replay_mismatches = 0  # replayed exchanges whose stored prompt differs from the rendered one

    # ------------------------------------------------------------------------------------------- state
    @property
    def exhausted(self) -> bool:
        """No more calls this run: budget (calls or tokens) used up, gave up, or the replay is consumed."""
        if self._replay is not None:
            return self._replay_position >= len(self._replay)
        return (self.gave_up is not None or self.calls >= self.cfg.max_calls
                or self.tokens >= self.cfg.max_tokens)

    def restore_budget(self, exchanges: Sequence[Mapping[str, Any]]) -> None:
        """Count the calls and tokens of exchanges stored earlier in this run (on resume), so the budget
        is per run, not per process.  Records without usage (refused calls) cost nothing."""
        for data in exchanges:
            usage = data.get("usage")
            if isinstance(usage, str):
                usage = json.loads(usage)
            if usage is None:
                continue
            self.calls += 1
            self.tokens += int(usage.get("total_tokens", 0) or 0)

    def stats(self) -> dict:
        return {"calls": self.calls, "tokens": self.tokens, "attempts": self.attempts, "retries": self.retries,
                "failures": self.failures, "gave_up": self.gave_up, "exhausted": self.exhausted,
                "replay_mismatches": self.replay_mismatches}

    def close(self) -> None:
        if self._owns_client and self._client is not None:
            try:
                self._client.close()
            except Exception:  # noqa: BLE001
                pass
            self._client = None

    def __enter__(self) -> LLMProposer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---------------------------------------------------------------------------------------- propose
    def propose(self, context: PromptContext) -> Proposal:
        start = self._clock()
        try:
            rendered = render_prompt(context, self.cfg.prompt_version, n_wanted=self.cfg.n_wanted)
        except Exception as e:  # noqa: BLE001 - a broken template must not stop the run
            log.exception("LLM prompt could not be rendered")
            return self._refused(RenderedPrompt(self.cfg.prompt_version, "", ""),
                                 f"prompt not rendered: {type(e).__name__}: {e}", start)
        try:
            if self._replay is not None:
                return self._propose_replay(rendered, context)
            return self._propose_live(rendered, context, start)
        except Exception as e:  # noqa: BLE001 - the LLM proposer never stops the run
            log.exception("LLM proposer failed")
            return self._refused(rendered, f"internal error: {type(e).__name__}: {e}", start)

    def _propose_live(self, rendered: RenderedPrompt, context: PromptContext, start: float) -> Proposal:
        refusal = self._budget_refusal(rendered)
        if refusal:
            return self._refused(rendered, refusal, start)
        try:
            self._get_client()
        except _GiveUp as e:
            self.gave_up = str(e)
            log.warning("LLM proposer gives up: %s", e)
            return self._refused(rendered, str(e), start)
        self.calls += 1
        prefix = f"llm{self.calls}"
        budget_left = self.cfg.max_tokens - self.tokens - self._estimate(rendered.system + rendered.prompt)
        max_output = max(1, min(self.cfg.max_output_tokens, budget_left))
        answer, usage, error, attempts = self._call(rendered, max_output)
        exchange = Exchange(self.name, self.cfg.resolved_model, rendered.version, rendered.system,
                            rendered.prompt, answer, error, usage, self._clock() - start)
        if error is not None:
            self.failures += 1
            log.warning("LLM call %d failed: %s", self.calls, error)
            if self.gave_up is None and self.failures >= max(self.cfg.max_failures, 1):
                self.gave_up = f"{self.failures} calls in a row failed; last: {error}"
            return Proposal([], [], exchange, attempts)
        self.failures = 0
        self.tokens += int(usage.get("total_tokens", 0))
        candidates, rejections = self._parse(answer, prefix, context)
        return Proposal(candidates, rejections, exchange, attempts)

    def _propose_replay(self, rendered: RenderedPrompt, context: PromptContext) -> Proposal:
        if self._replay_position >= len(self._replay):
            return self._refused(rendered, f"replay exhausted: all {len(self._replay)} stored exchanges used",
                                 self._clock())
        exchange = self._replay[self._replay_position]
        self._replay_position += 1
        if (exchange.prompt, exchange.system) != (rendered.prompt, rendered.system):
            self.replay_mismatches += 1
            log.warning("replayed exchange %d was stored for a different prompt than the one rendered now",
                        self._replay_position)
        if exchange.usage is None:  # no request was made for it (budget, gave up)
            return Proposal([], [], exchange, 0)
        self.calls += 1
        self.attempts += int(exchange.usage.get("attempts", 1))
        if exchange.error is not None or exchange.answer is None:
            return Proposal([], [], exchange, 0)
        self.tokens += int(exchange.usage.get("total_tokens", 0))
        candidates, rejections = self._parse(exchange.answer, f"llm{self.calls}", context)
        return Proposal(candidates, rejections, exchange, 0)

    def _parse(self, answer: str, prefix: str, context: PromptContext) -> tuple[list[Candidate], list[Rejection]]:
        candidates, rejections = parse_candidates(answer, name_prefix=prefix, max_complexity=context.max_complexity,
                                                  validate=self.cfg.validate)
        if rejections:
            log.info("LLM call %s: %d objective(s) parsed, %d rejected", prefix, len(candidates), len(rejections))
        return candidates, rejections

    def _refused(self, rendered: RenderedPrompt, reason: str, start: float) -> Proposal:
        exchange = Exchange(self.name, self.cfg.resolved_model, rendered.version, rendered.system, rendered.prompt,
                            None, reason, None, max(self._clock() - start, 0.0))
        return Proposal([], [], exchange, 0)

    def _budget_refusal(self, rendered: RenderedPrompt) -> str | None:
        cfg = self.cfg
        if self.gave_up is not None:
            return f"LLM proposer gave up: {self.gave_up}"
        if self.calls >= cfg.max_calls:
            return f"call budget exhausted ({self.calls}/{cfg.max_calls} calls)"
        if self.tokens >= cfg.max_tokens:
            return f"token budget exhausted ({self.tokens}/{cfg.max_tokens} tokens)"
        left = cfg.max_tokens - self.tokens - self._estimate(rendered.system + rendered.prompt)
        if left < min(MIN_OUTPUT_TOKENS, cfg.max_output_tokens):
            self.gave_up = (f"token budget too small for another call ({cfg.max_tokens - self.tokens} tokens "
                            f"left, the prompt alone takes about {self._estimate(rendered.system + rendered.prompt)})")
            return f"token budget exhausted: {self.gave_up}"
        return None

    @staticmethod
    def _estimate(text: str | None) -> int:
        return math.ceil(len(text or "") / CHARS_PER_TOKEN)

    # ------------------------------------------------------------------------------------------- calls
    def _call(self, rendered: RenderedPrompt, max_output: int) -> tuple[str | None, dict | None, str | None, int]:
        """(answer, usage, error, attempts) of one call, with bounded retries."""
        attempts, error = 0, None
        for attempt in range(self.cfg.max_retries + 1):
            attempts += 1
            self.attempts += 1
            try:
                answer, usage = self._request(rendered, max_output)
                usage["attempts"] = attempts
                return answer, usage, None, attempts
            except Exception as e:  # noqa: BLE001 - classified below; nothing escapes
                error, retry, wait, give_up = self._classify(e)
                if give_up:
                    self.gave_up = error
                if not retry or attempt == self.cfg.max_retries:
                    break
                delay = min(self.cfg.max_backoff_s, wait if wait is not None else self.cfg.backoff_s * 2 ** attempt)
                self.retries += 1
                log.info("LLM request failed (%s); retry %d/%d in %.1f s", error, attempt + 1,
                         self.cfg.max_retries, delay)
                self._sleep(delay)
        return None, {"attempts": attempts}, f"{error} (after {attempts} attempt{'s' * (attempts > 1)})", attempts

    def _classify(self, e: Exception) -> tuple[str, bool, float | None, bool]:
        """(message, retry?, server-requested wait, give up for the run?) for an exception of a call."""
        message = _short(f"{type(e).__name__}: {e}")
        status = getattr(e, "status_code", None)
        kind = _sdk_kind(e)
        if kind == "timeout":
            return f"timeout after {self.cfg.timeout_s:g} s: {message}", True, None, False
        if kind == "connection":
            return f"connection error: {message}", True, None, False
        if kind == "status" and isinstance(status, int):
            if status in RETRY_STATUSES or status >= 500:
                return f"HTTP {status}: {message}", True, _retry_after(e), False
            return f"HTTP {status}: {message}", False, None, status in GIVE_UP_STATUSES
        if isinstance(e, _BadResponse):
            return f"unexpected response: {_short(str(e))}", False, None, False
        return f"unexpected error: {message}", False, None, False

    def _request(self, rendered: RenderedPrompt, max_output: int) -> tuple[str, dict]:
        client = self._get_client()
        cfg = self.cfg
        if cfg.provider == "anthropic":
            response = client.messages.create(
                model=cfg.resolved_model, max_tokens=max_output, system=rendered.system,
                messages=[{"role": "user", "content": rendered.prompt}])
        else:
            kwargs: dict[str, Any] = {
                "model": cfg.resolved_model,
                "messages": [{"role": "system", "content": rendered.system},
                             {"role": "user", "content": rendered.prompt}],
            }
            # api.openai.com wants max_completion_tokens; servers implementing the older API want max_tokens
            kwargs["max_completion_tokens" if cfg.provider == "openai" else "max_tokens"] = max_output
            if cfg.temperature is not None:
                kwargs["temperature"] = cfg.temperature
            response = client.chat.completions.create(**kwargs)
        try:
            answer, prompt_tokens, completion_tokens, stop_reason = _read_response(cfg.provider, response)
        except Exception as e:  # noqa: BLE001
            raise _BadResponse(f"{type(e).__name__}: {e}") from None
        record: dict[str, Any] = {}
        if not (isinstance(prompt_tokens, int) and isinstance(completion_tokens, int)):
            prompt_tokens = self._estimate(rendered.system + rendered.prompt)
            completion_tokens = self._estimate(answer)
            record["estimated"] = True
        record.update(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                      total_tokens=prompt_tokens + completion_tokens,
                      stop_reason=None if stop_reason is None else str(stop_reason))
        return answer, record

    def _get_client(self) -> Any:
        if self._client is None:
            self._client = self._make_client()
            self._owns_client = self._http_client is None
        return self._client

    def _make_client(self) -> Any:
        cfg = self.cfg
        env = cfg.key_env
        if env is None:
            key = PLACEHOLDER_KEY
        else:
            key = os.environ.get(env)
            if not key:
                raise _GiveUp(f"no {env} set")
        kwargs: dict[str, Any] = {"api_key": key, "timeout": cfg.timeout_s, "max_retries": 0}
        if self._http_client is not None:
            kwargs["http_client"] = self._http_client
        if cfg.base_url:
            kwargs["base_url"] = cfg.base_url
        elif cfg.provider == "openai-compatible":
            raise _GiveUp("provider 'openai-compatible' needs base_url")
        try:
            if cfg.provider == "anthropic":
                import anthropic
                return anthropic.Anthropic(**kwargs)
            import openai
            return openai.OpenAI(**kwargs)
        except ImportError as e:
            raise _GiveUp(f"SDK not installed: {e}") from None
        except Exception as e:  # noqa: BLE001 - e.g. the SDK refusing the configuration
            raise _GiveUp(f"cannot create the {cfg.provider} client: {type(e).__name__}: {e}") from None


def _read_response(provider: str, response: Any) -> tuple[str, Any, Any, Any]:
    """(answer text, prompt tokens, completion tokens, stop reason) of an SDK response."""
    if provider == "anthropic":
        blocks = response.content
        if not isinstance(blocks, list):
            raise ValueError(f"no content blocks in a {type(response).__name__}")
        answer = "".join(getattr(b, "text", "") or "" for b in blocks if getattr(b, "type", None) == "text")
        usage = getattr(response, "usage", None)
        return (answer, getattr(usage, "input_tokens", None), getattr(usage, "output_tokens", None),
                getattr(response, "stop_reason", None))
    choices = getattr(response, "choices", None)
    if not choices:
        raise ValueError(f"no choices in a {type(response).__name__}")
    choice = choices[0]
    answer = getattr(choice.message, "content", None) or ""
    usage = getattr(response, "usage", None)
    return (answer, getattr(usage, "prompt_tokens", None), getattr(usage, "completion_tokens", None),
            getattr(choice, "finish_reason", None))


def _sdk_kind(e: Exception) -> str | None:
    """"timeout" / "connection" / "status" for the SDKs' exception families (openai and anthropic share
    the class names), else None."""
    for module_name in ("openai", "anthropic"):
        module = _loaded(module_name)
        if module is None:
            continue
        if isinstance(e, module.APITimeoutError):
            return "timeout"
        if isinstance(e, module.APIConnectionError):
            return "connection"
        if isinstance(e, module.APIStatusError):
            return "status"
    return None


def _loaded(name: str):
    return sys.modules.get(name)


def _retry_after(e: Exception) -> float | None:
    """Seconds the server asked to wait (Retry-After / retry-after-ms), when it said so in seconds."""
    headers = getattr(getattr(e, "response", None), "headers", None)
    if headers is None:
        return None
    for name, scale in (("retry-after-ms", 1e-3), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value) * scale
        except ValueError:
            continue
        if math.isfinite(seconds) and seconds >= 0:
            return seconds
    return None


def _short(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= MAX_ERROR_CHARS else text[:MAX_ERROR_CHARS - 3] + "..."


__all__ = ["DEFAULT_MODELS", "Exchange", "LLMConfig", "LLMProposer", "PROVIDERS", "Proposal", "llm_available"]
