"""One client for every OpenAI-compatible endpoint loom calls: the LLM judge (`loom.eval.judge`), the captioning
VLM and the image generation / edit endpoints of dataset construction (`loom.data.construct`).

Every HTTP call goes through one retry policy (tenacity). Retried: 429, 408/409, 5xx, timeouts, connection errors
and *malformed 200 replies* — an HTML page, an empty or truncated body, no `choices`, an `{"error": …}` body, a
message without text, an image reply without image data. The wait after failed attempt k is base·2^(k−1); a
server's Retry-After (seconds, HTTP date or retry-after-ms) raises it to at least that long; the wait is capped at
`max_wait_s` and U(0, jitter) is added so parallel workers do not retry in lockstep. After `max_attempts` the call
raises `CallFailed` and the caller records the item as failed (never a guessed value). 400/413/415/422 refuse only
this request (`CallFailed` at once, not retried); 401/403/404 refuse every request (`EndpointError`: stop the run,
the key, model or URL is wrong). The SDK's own retries are off (max_retries=0) so every attempt is counted and all
waits follow this policy. Well-formed replies are cached on disk (`loom.utils.reply_cache`); the API key is read
from the environment only, so it never lands in shell history, configs or result files.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import openai
import tenacity

from loom.utils.journal import Journal
from loom.utils.openai_replies import (  # noqa: F401  (MalformedReply, extract_json_object: part of this API)
    MalformedReply,
    chat_reply,
    extract_json_object,
    image_reply,
    retry_after_s,
)
from loom.utils.reply_cache import CachedReply, ReplyCache, cache_key

T = TypeVar("T")
R = TypeVar("R")

# USD per 1M tokens (input, output), list prices as of 2025. Only used for the printed estimate; override with
# price_in_per_mtok / price_out_per_mtok when your endpoint bills differently.
KNOWN_PRICES: dict[str, tuple[float, float]] = {
    "gpt-4o-2024-08-06": (2.50, 10.00),
    "gpt-4o-2024-11-20": (2.50, 10.00),
    "gpt-4o": (2.50, 10.00),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-2025-04-14": (2.00, 8.00),
}

REASK_TEMPLATE = (
    "Your previous reply could not be used: {problem}. Reply again with ONLY the JSON object in the "
    "required format (no markdown, no comments), with every field as specified."
)
RETRY_STATUS = (408, 409, 429)  # plus every 5xx
ITEM_REFUSALS = (400, 413, 415, 422)  # this request is bad (too long, bad image); the next item may be fine


class EndpointError(RuntimeError):
    """The endpoint cannot be used at all (no key in the environment; HTTP 401/403/404): stop the run."""


class CallFailed(RuntimeError):
    """One call failed for good: `kind` is "transport" (retries exhausted on 429/5xx/timeouts), "malformed"
    (every attempt got an unusable 200 reply) or "refused" (HTTP 400/413/415/422 for this request)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class _Retryable(Exception):
    def __init__(self, kind: str, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.kind, self.message, self.retry_after = kind, message, retry_after


@dataclass
class ApiConfig:
    model: str  # pinned snapshot, e.g. gpt-4o-2024-08-06 (recorded with every result)
    base_url: str | None = None  # None → the openai package default (api.openai.com)
    api_key_env: str = "OPENAI_API_KEY"  # name of the env var holding the key; never the key itself
    temperature: float | None = 0.0  # None → field omitted (the official OmniContext scorer's behaviour)
    max_tokens: int = 1500  # ≥ 1500 so the long Fig. 7 judge JSON is never truncated
    json_mode: bool = True  # response_format=json_object; needs the word "JSON" in the prompt
    timeout_s: float = 120.0  # per HTTP request
    max_attempts: int = 6  # attempts per call (429/5xx/timeout/connection/malformed reply)
    backoff_base_s: float = 1.0  # wait base·2^(k-1) (at least Retry-After), ≤ max_wait_s, + U(0, jitter)
    jitter_s: float = 1.0
    max_wait_s: float = 60.0  # cap on one wait, Retry-After included (a server asking for an hour is not obeyed)
    workers: int = 16  # thread-pool size of `map`
    cache_dir: Path | None = None  # None → no cache (tests only; real runs should always cache)
    price_in_per_mtok: float | None = None  # USD per 1M input tokens; None → KNOWN_PRICES or unknown
    price_out_per_mtok: float | None = None

    def public(self) -> dict[str, Any]:
        """What gets recorded next to results: everything but secrets and local paths."""
        d = asdict(self)
        d.pop("cache_dir")
        return d


@dataclass
class Completion:
    text: str
    model_served: str
    cached: bool
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass
class JsonOutcome:
    """One JSON request after validation and at most one re-ask. `parsed` is None exactly when `valid` is False;
    `failure` then says why: "transport" | "malformed" | "refused" (the call failed, nothing cached) or
    "not_json" | "invalid" (the model answered twice with something unusable)."""

    valid: bool
    parsed: dict[str, Any] | None
    replies: list[str]
    error: str | None
    model_served: str | None
    reasked: bool = False
    failure: str | None = None


@dataclass
class Usage:
    requests: int = 0
    cache_hits: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    invalid: int = 0
    models_served: set[str] = field(default_factory=set)

    def summary(self, cfg: ApiConfig) -> dict[str, Any]:
        price = (cfg.price_in_per_mtok, cfg.price_out_per_mtok)
        if None in price:
            price = KNOWN_PRICES.get(cfg.model, (None, None))
        cost = None
        if None not in price:
            cost = round(self.prompt_tokens / 1e6 * price[0] + self.completion_tokens / 1e6 * price[1], 6)
        return {
            "requests": self.requests,
            "cache_hits": self.cache_hits,
            "retries": self.retries,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "invalid_items": self.invalid,
            "models_served": sorted(self.models_served),
            "estimated_cost_usd": cost,
        }


class ApiClient:
    """Thread-safe: one instance is shared by the worker threads of `map`."""

    def __init__(self, cfg: ApiConfig, sleep: Callable[[float], None] = time.sleep) -> None:
        key = os.environ.get(cfg.api_key_env)
        if not key:
            raise EndpointError(
                f"no API key for {cfg.base_url or 'api.openai.com'}: set the environment variable "
                f"{cfg.api_key_env} (any non-empty string for a local server without auth)"
            )
        self.cfg = cfg
        self._client = openai.OpenAI(api_key=key, base_url=cfg.base_url, max_retries=0, timeout=cfg.timeout_s)
        self.cache = ReplyCache(cfg.cache_dir) if cfg.cache_dir else None
        self.usage = Usage()
        self._lock = threading.Lock()
        self._sleep = sleep

    # ---- one HTTP call, retried ---------------------------------------------------------------------------
    def _wait(self, state: tenacity.RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        wait_s = self.cfg.backoff_base_s * 2 ** (state.attempt_number - 1)
        asked = getattr(exc, "retry_after", None)
        if asked is not None:
            wait_s = max(wait_s, asked)
        return min(wait_s, self.cfg.max_wait_s) + random.uniform(0, self.cfg.jitter_s)

    def _count_retry(self, state: tenacity.RetryCallState) -> None:
        with self._lock:
            self.usage.retries += 1

    def call(self, request: Callable[[], Any], check: Callable[[Any], R]) -> R:
        """Run `request` (an SDK call) under the retry policy; `check` turns the reply into the result or raises
        MalformedReply. Raises CallFailed (this call) or EndpointError (every call)."""

        def attempt() -> R:
            with self._lock:
                self.usage.requests += 1
            try:
                resp = request()
            except openai.APIStatusError as e:
                code = e.status_code
                if code in RETRY_STATUS or code >= 500:
                    raise _Retryable("transport", f"HTTP {code}: {e.message}", retry_after_s(e.response)) from e
                if code in ITEM_REFUSALS:
                    raise CallFailed("refused", f"HTTP {code}: {e.message}") from e
                raise EndpointError(
                    f"endpoint returned HTTP {code}: {e.message}; check the model name "
                    f"({self.cfg.model}), the base URL and ${self.cfg.api_key_env}"
                ) from e
            except openai.APIConnectionError as e:  # timeouts included
                raise _Retryable("transport", f"{type(e).__name__}: {e}") from e
            except (json.JSONDecodeError, UnicodeDecodeError, openai.APIResponseValidationError) as e:
                raise _Retryable("malformed", f"unparsable reply body ({type(e).__name__}: {e})") from e
            try:
                return check(resp)
            except MalformedReply as e:
                raise _Retryable("malformed", str(e)) from e

        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.cfg.max_attempts),
            wait=self._wait,
            retry=tenacity.retry_if_exception_type(_Retryable),
            before_sleep=self._count_retry,
            sleep=self._sleep,
            reraise=True,
        )
        try:
            return retrying(attempt)
        except _Retryable as e:
            raise CallFailed(e.kind, f"gave up after {self.cfg.max_attempts} attempts: {e.message}") from e

    # ---- chat (cached) --------------------------------------------------------------------------------------
    def _params(self) -> dict[str, Any]:
        p: dict[str, Any] = {"max_tokens": self.cfg.max_tokens}
        if self.cfg.temperature is not None:
            p["temperature"] = self.cfg.temperature
        if self.cfg.json_mode:
            p["response_format"] = {"type": "json_object"}
        return p

    def _cached(self, key: str) -> CachedReply | None:
        hit = self.cache.get(key) if self.cache is not None else None
        if hit is not None:
            with self._lock:
                self.usage.cache_hits += 1
                self.usage.models_served.add(hit.model_served)
        return hit

    def complete(self, messages: list[dict[str, Any]], repeat: int | str = 0) -> Completion:
        params = self._params()
        key = cache_key(self.cfg.model, messages, params, repeat)
        hit = self._cached(key)
        if hit is not None:
            return Completion(hit.text, hit.model_served, True, hit.prompt_tokens, hit.completion_tokens)
        text, served, pt, ct = self.call(
            lambda: self._client.chat.completions.create(model=self.cfg.model, messages=messages, **params),
            chat_reply,
        )
        reply = CachedReply(text, served or self.cfg.model, pt, ct, time.time())
        with self._lock:
            self.usage.prompt_tokens += pt
            self.usage.completion_tokens += ct
            self.usage.models_served.add(reply.model_served)
        if self.cache is not None:
            self.cache.put(key, reply, self.cfg.model)
        return Completion(text, reply.model_served, False, pt, ct)

    def ask_json(
        self,
        messages: list[dict[str, Any]],
        validate: Callable[[dict[str, Any]], tuple[dict[str, Any] | None, str | None]],
        repeat: int | str = 0,
    ) -> JsonOutcome:
        """Ask, parse one JSON object, validate; on an unusable answer re-ask exactly once, then give up."""
        replies: list[str] = []
        served = None
        convo = list(messages)
        problem, failure = "", "invalid"
        for ask in range(2):  # the original question + exactly one re-ask
            try:
                c = self.complete(convo, repeat=repeat)
            except CallFailed as e:
                with self._lock:
                    self.usage.invalid += 1
                # Not cached, so the next run retries this item instead of inheriting the outage.
                return JsonOutcome(False, None, replies, f"{e.kind}: {e}", served, ask > 0, e.kind)
            replies.append(c.text)
            served = c.model_served
            obj = extract_json_object(c.text)
            if obj is None:
                problem, failure = "it was not a JSON object", "not_json"
            else:
                parsed, problem_or_none = validate(obj)
                if parsed is not None:
                    return JsonOutcome(True, parsed, replies, None, served, reasked=ask > 0)
                problem, failure = problem_or_none or "it failed validation", "invalid"
            convo = [
                *messages,
                {"role": "assistant", "content": c.text},
                {"role": "user", "content": REASK_TEMPLATE.format(problem=problem)},
            ]
        with self._lock:
            self.usage.invalid += 1
        return JsonOutcome(False, None, replies, f"invalid after re-ask: {problem}", served, True, failure)

    # ---- images (cached) ------------------------------------------------------------------------------------
    def _image(self, op: str, prompt: str, images: list[bytes], size: str | None, repeat: int | str) -> bytes:
        digests = [hashlib.sha256(b).hexdigest() for b in images]
        key = cache_key(self.cfg.model, [{"op": op, "prompt": prompt, "images": digests}], {"size": size}, repeat)
        hit = self._cached(key)
        if hit is not None:
            return base64.b64decode(hit.text)
        extra: dict[str, Any] = {"size": size} if size else {}
        if op == "generate":
            request = lambda: self._client.images.generate(model=self.cfg.model, prompt=prompt, **extra)  # noqa: E731
        else:
            files = [(f"image_{k}.png", b, "image/png") for k, b in enumerate(images)]
            request = lambda: self._client.images.edit(  # noqa: E731
                model=self.cfg.model, image=files if len(files) > 1 else files[0], prompt=prompt, **extra
            )
        raw = self.call(request, lambda r: image_reply(r, self.cfg.timeout_s))
        with self._lock:
            self.usage.models_served.add(self.cfg.model)
        if self.cache is not None:
            self.cache.put(key, CachedReply(base64.b64encode(raw).decode("ascii"), self.cfg.model, 0, 0,
                                            time.time()), self.cfg.model)
        return raw

    def generate_image(self, prompt: str, size: str | None = None, repeat: int | str = 0) -> bytes:
        """Encoded image bytes from images.generate."""
        return self._image("generate", prompt, [], size, repeat)

    def edit_image(self, images: list[bytes], prompt: str, size: str | None = None, repeat: int | str = 0) -> bytes:
        """Encoded image bytes from images.edit with one or several PNG inputs."""
        return self._image("edit", prompt, images, size, repeat)

    # ---- many items ---------------------------------------------------------------------------------------
    def map(
        self,
        fn: Callable[[T], R],
        items: Iterable[T],
        journal: Path | None = None,
        key: Callable[[T], str] | None = None,
    ) -> list[R]:
        """Run `fn` over items on the thread pool; results keep input order. With a `journal`, every result is
        persisted as it completes and items already journaled are not run again, so an interrupt or an
        exception (which stops the pool and propagates) loses nothing that finished."""
        items = list(items)
        results: list[Any] = [None] * len(items)
        if journal is not None and key is None:
            raise ValueError("map(journal=…) needs key=: the journal recognises finished items by their key")
        book = Journal(journal) if journal is not None else None
        done = book.load() if book is not None else {}
        todo = []
        for i, x in enumerate(items):
            if key is not None and key(x) in done:
                results[i] = done[key(x)]
            else:
                todo.append(i)

        def finish(i: int, r: Any) -> None:
            results[i] = r
            if book is not None and key is not None:
                book.append(key(items[i]), r)

        if self.cfg.workers <= 1 or len(todo) <= 1:
            for i in todo:
                finish(i, fn(items[i]))
            return results
        pool = ThreadPoolExecutor(max_workers=self.cfg.workers)
        try:
            futures = {pool.submit(fn, items[i]): i for i in todo}
            pending = set(futures)
            while pending:
                finished, pending = wait(pending, return_when=FIRST_EXCEPTION)
                for f in finished:
                    if f.exception() is None:
                        finish(futures[f], f.result())
                for f in finished:
                    if f.exception() is not None:
                        raise f.exception()  # type: ignore[misc]
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
        return results
