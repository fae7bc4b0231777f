"""LLM-judge client on the `openai` package for any OpenAI-compatible endpoint.

Settings follow eval-protocols.md §1: pinned model, temperature 0, JSON replies validated by the caller, retries
with exponential backoff + jitter on 429/5xx/timeouts, one re-ask on an unusable reply and then *invalid* (never a
guessed score), an on-disk cache, a thread pool, and a usage/cost summary. The API key is read from the environment
only, so it never lands in shell history or result files.
"""

from __future__ import annotations

import json
import os
import random
import re
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import openai

from loom.eval.fsio import EvalInputError
from loom.eval.judge_cache import CachedReply, JudgeCache, cache_key

T = TypeVar("T")
R = TypeVar("R")

# USD per 1M tokens (input, output), list prices as of 2025. Only used for the printed estimate; override with
# --judge-price-in / --judge-price-out when your endpoint bills differently.
KNOWN_PRICES: dict[str, tuple[float, float]] = {
    "gpt-4o-2024-08-06": (2.50, 10.00),
    "gpt-4o-2024-11-20": (2.50, 10.00),
    "gpt-4o": (2.50, 10.00),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-2025-04-14": (2.00, 8.00),
}

REASK_TEMPLATE = (
    "Your previous reply could not be used: {problem}. Reply again with ONLY the JSON object in the "
    "required format (no markdown, no comments), with every score an integer in the stated range."
)


class JudgeError(RuntimeError):
    """The endpoint refused the request for a reason retrying cannot fix (bad key, bad model name, 4xx)."""


@dataclass
class JudgeConfig:
    model: str  # pinned snapshot, e.g. gpt-4o-2024-08-06 (recorded in results)
    base_url: str | None = None  # None → the openai package default (api.openai.com)
    api_key_env: str = "OPENAI_API_KEY"  # name of the env var holding the key; never the key itself
    temperature: float | None = 0.0  # None → field omitted (the official OmniContext scorer's behaviour)
    max_tokens: int = 1500  # ≥ 1500 so the long Fig. 7 JSON is never truncated
    json_mode: bool = True  # response_format=json_object; needs the word "JSON" in the prompt
    timeout_s: float = 120.0  # per HTTP request
    max_attempts: int = 6  # transport attempts per call (429/5xx/timeout/connection)
    backoff_base_s: float = 1.0  # wait base·2^(k-1) + U(0, jitter) after failed attempt k
    jitter_s: float = 1.0
    workers: int = 16  # thread-pool size for judge_many
    cache_dir: Path | None = None  # None → no cache (tests only; real runs should always cache)
    price_in_per_mtok: float | None = None  # USD per 1M input tokens; None → KNOWN_PRICES or unknown
    price_out_per_mtok: float | None = None

    def public(self) -> dict[str, Any]:
        """What gets recorded next to scores: everything but secrets and local paths."""
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
class JudgeOutcome:
    """Result of one judged item-repeat. `parsed` is None exactly when `valid` is False."""

    valid: bool
    parsed: dict[str, Any] | None
    replies: list[str]
    error: str | None
    model_served: str | None
    reasked: bool = False


@dataclass
class Usage:
    requests: int = 0
    cache_hits: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    invalid: int = 0
    models_served: set[str] = field(default_factory=set)

    def summary(self, cfg: JudgeConfig) -> dict[str, Any]:
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


def extract_json_object(text: str) -> dict[str, Any] | None:
    """Parse a reply that should be a JSON object; tolerate ```json fences and prose around one object.

    This only strips packaging; it never invents a value, so it is not the "guess" the protocol forbids.
    """
    candidates = [text.strip()]
    fenced = re.search(r"```(?:json)?\s*(.*?)```", text, flags=re.S)
    if fenced:
        candidates.append(fenced.group(1).strip())
    i, j = text.find("{"), text.rfind("}")
    if i != -1 and j > i:
        candidates.append(text[i : j + 1])
    for c in candidates:
        try:
            obj = json.loads(c)
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            return obj
    return None


Validator = Callable[[dict[str, Any]], tuple[dict[str, Any] | None, str | None]]


class JudgeClient:
    """Thread-safe: one instance is shared by the worker threads of `judge_many`."""

    def __init__(self, cfg: JudgeConfig, sleep: Callable[[float], None] = time.sleep) -> None:
        key = os.environ.get(cfg.api_key_env)
        if not key:
            raise EvalInputError(
                f"no judge API key: set the environment variable {cfg.api_key_env} "
                "(any non-empty string for a local server without auth)"
            )
        self.cfg = cfg
        # Retries are ours (jittered, counted, identical for every endpoint), so the SDK's own are disabled.
        self._client = openai.OpenAI(api_key=key, base_url=cfg.base_url, max_retries=0, timeout=cfg.timeout_s)
        self.cache = JudgeCache(cfg.cache_dir) if cfg.cache_dir else None
        self.usage = Usage()
        self._lock = threading.Lock()
        self._sleep = sleep

    # ---- one HTTP call (cached) ------------------------------------------------------------------------------
    def _params(self) -> dict[str, Any]:
        p: dict[str, Any] = {"max_tokens": self.cfg.max_tokens}
        if self.cfg.temperature is not None:
            p["temperature"] = self.cfg.temperature
        if self.cfg.json_mode:
            p["response_format"] = {"type": "json_object"}
        return p

    def complete(self, messages: list[dict[str, Any]], repeat: int | str = 0) -> Completion:
        params = self._params()
        key = cache_key(self.cfg.model, messages, params, repeat)
        if self.cache is not None:
            hit = self.cache.get(key)
            if hit is not None:
                with self._lock:
                    self.usage.cache_hits += 1
                    self.usage.models_served.add(hit.model_served)
                return Completion(hit.text, hit.model_served, True, hit.prompt_tokens, hit.completion_tokens)
        resp = self._create_with_retries(messages, params)
        text = resp.choices[0].message.content or ""
        u = resp.usage
        reply = CachedReply(
            text,
            resp.model or self.cfg.model,
            getattr(u, "prompt_tokens", 0) or 0,
            getattr(u, "completion_tokens", 0) or 0,
            time.time(),
        )
        with self._lock:
            self.usage.prompt_tokens += reply.prompt_tokens
            self.usage.completion_tokens += reply.completion_tokens
            self.usage.models_served.add(reply.model_served)
        if self.cache is not None:
            self.cache.put(key, reply, self.cfg.model)
        return Completion(text, reply.model_served, False, reply.prompt_tokens, reply.completion_tokens)

    def _create_with_retries(self, messages: list[dict[str, Any]], params: dict[str, Any]) -> Any:
        last: Exception | None = None
        for attempt in range(1, self.cfg.max_attempts + 1):
            with self._lock:
                self.usage.requests += 1
            try:
                return self._client.chat.completions.create(model=self.cfg.model, messages=messages, **params)
            except (
                openai.RateLimitError,
                openai.InternalServerError,
                openai.APITimeoutError,
                openai.APIConnectionError,
            ) as e:
                last = e
            except openai.APIStatusError as e:
                if e.status_code not in (408, 409) and e.status_code < 500:
                    raise JudgeError(
                        f"judge endpoint returned HTTP {e.status_code}: {e.message}; check "
                        f"--judge-model/--judge-base-url and ${self.cfg.api_key_env}"
                    ) from e
                last = e
            if attempt < self.cfg.max_attempts:
                with self._lock:
                    self.usage.retries += 1
                self._sleep(
                    self.cfg.backoff_base_s * 2 ** (attempt - 1) + random.uniform(0, self.cfg.jitter_s)
                )
        raise TransportExhausted(f"gave up after {self.cfg.max_attempts} attempts: {last!r}")

    # ---- one judged item: parse, validate, re-ask once ---------------------------------------------------------
    def ask_json(self, messages: list[dict[str, Any]], validate: Validator, repeat: int = 0) -> JudgeOutcome:
        replies: list[str] = []
        served = None
        convo = list(messages)
        problem = ""
        for ask in range(2):  # the original question + exactly one re-ask
            try:
                c = self.complete(convo, repeat=repeat)
            except TransportExhausted as e:
                with self._lock:
                    self.usage.invalid += 1
                # Not cached, so the next run retries this item instead of inheriting the outage.
                return JudgeOutcome(False, None, replies, f"transport: {e}", served, reasked=ask > 0)
            replies.append(c.text)
            served = c.model_served
            obj = extract_json_object(c.text)
            if obj is None:
                problem = "it was not a JSON object"
            else:
                parsed, problem_or_none = validate(obj)
                if parsed is not None:
                    return JudgeOutcome(True, parsed, replies, None, served, reasked=ask > 0)
                problem = problem_or_none or "it failed validation"
            convo = [
                *messages,
                {"role": "assistant", "content": c.text},
                {"role": "user", "content": REASK_TEMPLATE.format(problem=problem)},
            ]
        with self._lock:
            self.usage.invalid += 1
        return JudgeOutcome(False, None, replies, f"invalid after re-ask: {problem}", served, reasked=True)

    def judge_many(self, fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
        """Run `fn` over items on the thread pool; results keep input order."""
        items = list(items)
        if self.cfg.workers <= 1 or len(items) <= 1:
            return [fn(x) for x in items]
        with ThreadPoolExecutor(max_workers=self.cfg.workers) as pool:
            return list(pool.map(fn, items))


class TransportExhausted(RuntimeError):
    """Every transport attempt failed with a retryable error (429/5xx/timeout/connection)."""
