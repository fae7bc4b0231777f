"""The LLM judge: settings of eval-protocols §1 on the shared OpenAI-compatible client.

Pinned model, temperature 0, JSON replies validated by the rubric (`loom.eval.rubrics`), one re-ask on an unusable
reply and then *invalid* (never a guessed score), an on-disk cache and a thread pool. Transport, retries (429
Retry-After honoured and capped, jittered exponential backoff) and malformed-reply handling live in
`loom.utils.openai_client`, shared with the captioning VLM of dataset construction, so both behave the same.
Scoring runs persist every finished item as it completes (`JudgeClient.judge_many(journal=…)`).
"""

from __future__ import annotations

from dataclasses import dataclass

from loom.utils.openai_client import (  # noqa: F401  (re-exported: the eval suite's names)
    KNOWN_PRICES,
    ApiClient,
    ApiConfig,
    CallFailed,
    Completion,
    EndpointError,
    JsonOutcome,
    Usage,
    extract_json_object,
)

# The eval CLI turns this into a one-line error: no key, or the endpoint refuses every request (401/403/404).
JudgeError = EndpointError


@dataclass
class JudgeConfig(ApiConfig):
    """Judge settings; the defaults are the protocol's (temperature 0, max_tokens 1500, JSON mode, 6 attempts).
    `model` must be a pinned snapshot such as gpt-4o-2024-08-06: it is recorded with every score."""


class JudgeClient(ApiClient):
    """`ask_json` per judged item-repeat; `judge_many` runs items on the thread pool, keeping input order, and with
    `journal=` persists each record as it completes so a crash or an interrupt loses nothing already scored."""

    judge_many = ApiClient.map
