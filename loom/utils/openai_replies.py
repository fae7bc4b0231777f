"""What counts as a usable reply of an OpenAI-compatible endpoint (`loom.utils.openai_client` retries the rest).

A 200 reply is *malformed* — retried like a 5xx — when it is not a chat completion (an HTML page, a plain-text or
JSON-list body, which the SDK returns as-is), has no `choices` (e.g. an `{"error": …}` body sent with status
200), or its message has no text; an image reply when it has no data, bad base64 or bytes that do not decode.
Empty and truncated bodies make the SDK raise JSONDecodeError, which the client treats the same way.
"""

from __future__ import annotations

import base64
import io
import json
import re
import time
from email.utils import parsedate_to_datetime
from typing import Any


class MalformedReply(ValueError):
    """A 200 reply that carries no usable result (raised by the reply checks, retried like a 5xx)."""


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


def retry_after_s(response: Any) -> float | None:
    """Seconds a 429/503 reply asks us to wait: `retry-after-ms`, `Retry-After: <seconds>` or an HTTP date."""
    headers = getattr(response, "headers", None) or {}
    for name, scale in (("retry-after-ms", 1e-3), ("retry-after", 1.0)):
        value = headers.get(name)
        if not value:
            continue
        try:
            return max(0.0, float(value) * scale)
        except ValueError:
            pass
        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            continue
    return None


def _describe(resp: Any) -> str:
    if isinstance(resp, str):
        body = " ".join(resp.split())
        return f"a non-JSON body {body[:60]!r}" if body else "an empty body"
    return f"a JSON {type(resp).__name__}"


def _extra(resp: Any) -> str:
    extra = getattr(resp, "model_extra", None) or {}
    return f" (body: {json.dumps(extra, default=str)[:120]})" if extra else ""


def chat_reply(resp: Any) -> tuple[str, str | None, int, int]:
    """(text, model served, prompt tokens, completion tokens) of a chat completion, or MalformedReply."""
    from openai.types.chat import ChatCompletion

    if not isinstance(resp, ChatCompletion):
        raise MalformedReply(f"expected a chat completion, got {_describe(resp)}")
    if not resp.choices:
        raise MalformedReply(f"reply has no choices{_extra(resp)}")
    message = getattr(resp.choices[0], "message", None)
    text = getattr(message, "content", None)
    if not isinstance(text, str) or not text.strip():
        reason = getattr(resp.choices[0], "finish_reason", None)
        raise MalformedReply(f"reply message has no text (finish_reason={reason!r})")
    u = resp.usage
    return text, resp.model, getattr(u, "prompt_tokens", 0) or 0, getattr(u, "completion_tokens", 0) or 0


def image_reply(resp: Any, timeout_s: float = 60.0) -> bytes:
    """PNG/JPEG bytes of the first image of an images.generate / images.edit reply, or MalformedReply."""
    from PIL import Image

    data = getattr(resp, "data", None)
    if not data:
        raise MalformedReply(f"image reply has no data{_extra(resp) if not isinstance(resp, str) else ''}")
    first = data[0]
    if getattr(first, "b64_json", None):
        try:
            raw = base64.b64decode(first.b64_json, validate=True)
        except ValueError as e:
            raise MalformedReply(f"image reply b64_json is not base64: {e}") from None
    elif getattr(first, "url", None):
        import httpx  # the openai package's own HTTP library

        try:
            raw = httpx.get(first.url, timeout=timeout_s).raise_for_status().content
        except httpx.HTTPError as e:  # the image URL is part of the reply: a failed fetch is retried like one
            raise MalformedReply(f"image reply url could not be fetched: {e}") from None
    else:
        raise MalformedReply("image reply has neither b64_json nor url")
    try:
        Image.open(io.BytesIO(raw)).load()
    except Exception as e:  # any decoder failure means the reply is unusable
        raise MalformedReply(f"image reply does not decode: {type(e).__name__}: {e}") from None
    return raw
