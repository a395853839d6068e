"""The LLM proposer: asks a chat model for new objectives, through the official `openai` / `anthropic` SDKs.

Providers:

* "openai"            `openai.OpenAI` (chat completions), key from `OPENAI_API_KEY`;
* "anthropic"         `anthropic.Anthropic` (messages), key from `ANTHROPIC_API_KEY`;
* "openai-compatible" `openai.OpenAI` pointed at `base_url` (vLLM, llama.cpp server, Ollama, LiteLLM...).
  The key comes from `api_key_env` when set, else from `OPENAI_API_KEY` when that is set, else the
  placeholder "EMPTY" is sent (servers that need no key accept it).

`base_url` for "anthropic" is the server root: the SDK appends `/v1/messages` itself, so a trailing `/v1`
is dropped.

One `propose(context)` renders the versioned prompt (`discovery.llm_prompt`), makes one call, and parses
the answer with the grammar's safe parser (`discovery.llm_parse`; never eval/exec/sympify).  Robustness:

* retries are ours and bounded: the SDK clients are built with `max_retries=0`, and a call is tried at most
  `1 + max_retries` times on 429, timeouts, connection errors and 5xx (also 408/409), waiting
  `backoff_s * 2**k` (or the server's Retry-After), capped at `max_backoff_s`, through the injectable
  `sleep`.  Other 4xx are not retried; 401/403/404 (bad key, no access, unknown model) and a missing key
  make the proposer give up for the run, as do `max_failures` failed calls in a row (a dead endpoint);
* `timeout_s` is a wall-clock deadline for the whole call, retries and waits included: a request runs in
  a worker thread that is abandoned at the deadline, so an endpoint that drips its answer byte by byte
  cannot hold the run (the SDK's own timeout only bounds each read);
* a budget of `max_calls` calls and `max_tokens` tokens (prompt + completion, from the reported usage, or
  estimated at 4 characters a token when an endpoint reports none);
* `propose` never raises for endpoint or answer problems: it returns a `Proposal` with no candidates and an
  `Exchange` whose `error` says what happened, and `exhausted` turns True once the budget is spent or the
  proposer gave up, so the search carries on with its other proposers;
* what comes from the endpoint is distrusted: reported token counts are clamped at 0, answers are stored
  cut at `MAX_ANSWER_CHARS` (longer ones are refused by the parser anyway), and control characters are
  removed from error messages (`discovery.text.printable`).

Every call gives one `Exchange` (system, prompt, answer or error, usage, seconds, the refused proposals of the
answer and the answer's layout) for the archive (`ArchiveStore.add_exchange(run_id, **exchange.to_dict())`).
`error` is set when the call failed (no answer) and when an answer gave no usable objective ("answer
rejected: ...").  `usage` is None exactly when no request was made (budget spent, gave up); otherwise it
holds `attempts` and, after an answer, `prompt_tokens`, `completion_tokens`, `total_tokens`, `stop_reason`
(and `estimated` when the endpoint reported no usage).  `LLMProposer(cfg, replay=store.exchanges(run_id))`
answers from the stored exchanges, in order, without any client: the same candidates, refusals, names and
counters come back, so a run replays offline.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import prompts
from discovery.llm_parse import MAX_ANSWER_CHARS, ParsedAnswer, ParsedObjective, Rejection, read_answer
from discovery.llm_prompt import PromptContext, RenderedPrompt, render_prompt
from discovery.text import printable

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
    timeout_s: float = 60.0  # wall-clock deadline of one call, retries and waits included
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
    check_validity: bool = True  # run grammar.validity.check on each parsed objective (rejections say why)

    def validate(self) -> None:
        """Raise ValueError naming the `discover run` option (or, for settings without one, the field)."""
        if self.provider not in PROVIDERS:
            raise ValueError(f"--llm-provider: unknown provider {self.provider!r}; use one of {', '.join(PROVIDERS)}")
        if not isinstance(self.model, str) or not self.model.strip():
            raise ValueError("--llm-model: give a model name")
        if self.base_url is not None and not str(self.base_url).startswith(("http://", "https://")):
            raise ValueError(f"--llm-base-url: {self.base_url!r} is not an http(s) URL")
        if self.provider == "openai-compatible" and not self.base_url:
            raise ValueError("--llm-base-url: provider 'openai-compatible' needs the server's base_url, "
                             "e.g. http://localhost:8000/v1")
        for flag, name in (("--llm-max-calls", "max_calls"), (None, "max_retries"), (None, "max_tokens"),
                           (None, "max_output_tokens"), (None, "max_failures"), (None, "n_wanted")):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{flag or 'LLMConfig.' + name}: must be a non-negative integer, got {value!r}")
        for flag, name in (("--llm-timeout", "timeout_s"), (None, "backoff_s"), (None, "max_backoff_s")):
            value = getattr(self, name)
            if isinstance(value, bool) or not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{flag or 'LLMConfig.' + name}: must be a finite number >= 0, got {value!r}")
        if self.timeout_s == 0:
            raise ValueError("--llm-timeout: must be more than 0 seconds")
        try:
            prompts.load(self.prompt_version)
        except ValueError as e:
            raise ValueError(f"LLMConfig.prompt_version: {e}") from None

    @property
    def resolved_model(self) -> str:
        if self.provider == "anthropic" and self.model == DEFAULT_MODEL:
            return DEFAULT_MODELS["anthropic"]
        return self.model

    @property
    def key_env(self) -> str | None:
        """The environment variable the key must come from (None: a compatible endpoint, where a key is
        optional: `OPENAI_API_KEY` when set, else the placeholder)."""
        return self.api_key_env or DEFAULT_KEY_ENV.get(self.provider)

    @property
    def resolved_base_url(self) -> str | None:
        if self.base_url is None:
            return None
        url = self.base_url.rstrip("/")
        return url[:-3] if self.provider == "anthropic" and url.endswith("/v1") else url


def llm_available(cfg: LLMConfig) -> tuple[bool, str]:
    """Whether `cfg` can be used, and why not; looks at the configuration, the SDK and the environment
    only (no network call)."""
    try:
        cfg.validate()
    except ValueError as e:
        return False, str(e)
    sdk = "anthropic" if cfg.provider == "anthropic" else "openai"
    try:
        __import__(sdk)
    except ImportError:
        return False, f"the {sdk} package is not installed (pip install {sdk})"
    env = cfg.key_env
    if env is not None and not os.environ.get(env):
        return False, f"no {env} set"
    if cfg.max_calls == 0 or cfg.max_tokens == 0:
        return False, "the LLM budget is zero (max_calls or max_tokens)"
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
    rejections: list[Rejection] = field(default_factory=list)  # proposals of the answer that were refused
    answer_shape: str | None = None  # the answer's layout (`discovery.llm_parse.ANSWER_SHAPES`)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Exchange:
        """From a stored exchange (extra keys such as `id` or `run_id` are ignored)."""
        fields = dataclasses.fields(cls)
        missing = [f.name for f in fields if f.name not in data and f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING]
        if missing:
            raise ValueError(f"stored exchange lacks {', '.join(missing)}")
        values = {f.name: data[f.name] for f in fields if f.name in data}
        if isinstance(values["usage"], str):
            values["usage"] = json.loads(values["usage"])
        values["seconds"] = float(values["seconds"] or 0.0)
        values["rejections"] = [tuple(r) for r in values.get("rejections") or []]
        return cls(**values)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class Proposal:
    candidates: list[ParsedObjective]  # parsed objectives (+ rationale), named f"llm{call}-{i}"
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
        cfg.validate()  # a bad configuration fails now, not at the first call
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
            self.tokens += _count(usage.get("total_tokens"))

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
        answer, usage, error, attempts = self._call(rendered, max_output, start)
        exchange = Exchange(self.name, self.cfg.resolved_model, rendered.version, rendered.system,
                            rendered.prompt, _capped(answer), error, usage, self._clock() - start)
        if error is not None:
            self.failures += 1
            log.warning("LLM call %d failed: %s", self.calls, error)
            if self.gave_up is None and self.failures >= max(self.cfg.max_failures, 1):
                self.gave_up = f"{self.failures} calls in a row failed; last: {error}"
            return Proposal([], [], exchange, attempts)
        self.failures = 0
        self.tokens += usage["total_tokens"]
        return self._answered(exchange, prefix, context, attempts)

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
        self.attempts += _count(exchange.usage.get("attempts", 1))
        if exchange.answer is None:
            return Proposal([], [], exchange, 0)
        self.tokens += _count(exchange.usage.get("total_tokens"))
        return self._answered(dataclasses.replace(exchange, error=None), f"llm{self.calls}", context, 0)

    def _answered(self, exchange: Exchange, prefix: str, context: PromptContext, attempts: int) -> Proposal:
        """Parse an answer; its refused proposals (and, when nothing usable came, the reason) go on the exchange."""
        parsed = self._parse(exchange.answer, prefix, context)
        exchange.rejections, exchange.answer_shape = parsed.rejections, parsed.shape
        if not parsed.candidates:
            exchange.error = f"answer rejected: {parsed.rejections[0][1]}" if parsed.rejections else "answer rejected"
        return Proposal(parsed.candidates, parsed.rejections, exchange, attempts)

    def _parse(self, answer: str, prefix: str, context: PromptContext) -> ParsedAnswer:
        parsed = read_answer(answer, name_prefix=prefix, max_complexity=context.max_complexity,
                             validate=self.cfg.check_validity)
        if parsed.rejections:
            log.info("LLM call %s: %d objective(s) parsed, %d rejected", prefix, len(parsed.candidates),
                     len(parsed.rejections))
        return parsed

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
    def _call(self, rendered: RenderedPrompt, max_output: int,
              start: float) -> tuple[str | None, dict | None, str | None, int]:
        """(answer, usage, error, attempts) of one call, with bounded retries, within the call's deadline."""
        deadline = start + self.cfg.timeout_s
        attempts, error = 0, None
        for attempt in range(self.cfg.max_retries + 1):
            attempts += 1
            self.attempts += 1
            try:
                answer, usage = _within(deadline - self._clock(), self._request, rendered, max_output,
                                        deadline - self._clock())
                usage["attempts"] = attempts
                return answer, usage, None, attempts
            except Exception as e:  # noqa: BLE001 - classified below; nothing escapes
                error, retry, wait, give_up = self._classify(e)
                if give_up:
                    self.gave_up = error
                if not retry or attempt == self.cfg.max_retries:
                    break
                delay = min(self.cfg.max_backoff_s, wait if wait is not None else self.cfg.backoff_s * 2 ** attempt)
                if self._clock() + delay >= deadline:
                    error += f"; no time left for a retry within the {self.cfg.timeout_s:g} s deadline"
                    break
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
        if isinstance(e, _Deadline) or kind == "timeout":
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

    def _request(self, rendered: RenderedPrompt, max_output: int, timeout: float) -> tuple[str, dict]:
        client = self._get_client()
        cfg = self.cfg
        if cfg.provider == "anthropic":
            response = client.messages.create(
                model=cfg.resolved_model, max_tokens=max_output, system=rendered.system,
                messages=[{"role": "user", "content": rendered.prompt}], timeout=timeout)
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
            response = client.chat.completions.create(**kwargs, timeout=timeout)
        try:
            answer, prompt_tokens, completion_tokens, stop_reason = _read_response(cfg.provider, response)
        except Exception as e:  # noqa: BLE001
            raise _BadResponse(f"{type(e).__name__}: {e}") from None
        record: dict[str, Any] = {}
        if not (_is_int(prompt_tokens) and _is_int(completion_tokens)):
            prompt_tokens = self._estimate(rendered.system + rendered.prompt)
            completion_tokens = self._estimate(answer)
            record["estimated"] = True
        prompt_tokens, completion_tokens = _count(prompt_tokens), _count(completion_tokens)
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
            key = os.environ.get(DEFAULT_KEY_ENV["openai"]) or PLACEHOLDER_KEY
        else:
            key = os.environ.get(env)
            if not key:
                raise _GiveUp(f"no {env} set")
        kwargs: dict[str, Any] = {"api_key": key, "timeout": cfg.timeout_s, "max_retries": 0}
        if self._http_client is not None:
            kwargs["http_client"] = self._http_client
        if cfg.base_url:
            kwargs["base_url"] = cfg.resolved_base_url
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


class _Deadline(Exception):
    """The call's wall-clock deadline passed before the answer was complete."""


def _within(seconds: float, fn: Callable, *args) -> Any:
    """fn(*args) in a daemon thread, waited for at most `seconds`; past that the thread is left to finish
    (the SDK's per-read timeout ends it) and _Deadline is raised."""
    if seconds <= 0:
        raise _Deadline("no time left")
    result: dict[str, Any] = {}

    def target():
        try:
            result["value"] = fn(*args)
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            result["error"] = e

    worker = threading.Thread(target=target, name="llm-request", daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        raise _Deadline("the answer was not complete by the deadline")
    if "error" in result:
        raise result["error"]
    return result["value"]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _count(value: Any) -> int:
    """A token or attempt count from outside: an integer >= 0 (anything else counts 0)."""
    return max(int(value), 0) if _is_int(value) or isinstance(value, float) and math.isfinite(value) else 0


def _capped(answer: str | None) -> str | None:
    """An answer as stored: cut past MAX_ANSWER_CHARS (still longer than the limit, so a replay refuses it
    with the same reason)."""
    if answer is None or len(answer) <= MAX_ANSWER_CHARS:
        return answer
    return answer[:MAX_ANSWER_CHARS] + f"\n[... cut: the answer had {len(answer)} characters]"


def _short(text: str) -> str:
    text = " ".join(printable(text).split())
    return text if len(text) <= MAX_ERROR_CHARS else text[:MAX_ERROR_CHARS - 3] + "..."


__all__ = ["DEFAULT_MODELS", "Exchange", "LLMConfig", "LLMProposer", "PROVIDERS", "Proposal", "llm_available"]
