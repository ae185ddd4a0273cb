"""A minimal client for OpenAI-compatible chat endpoints (Ollama, vLLM, llama.cpp server, hosted
APIs), standard library only, used by :mod:`fungizsl.data.llm_captions` to generate captions.

:class:`ChatClient` posts one chat completion request and returns the cleaned reply text. Its
errors say whether retrying can help: :class:`TransientChatError` (HTTP 5xx, 408, 429, connection
errors, malformed or empty replies) carries a ``kind`` for reports and the server's
``Retry-After``; :class:`ChatError` is final (e.g. HTTP 401/404). Loopback endpoints are reached
directly even when a proxy is configured.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import re
import socket
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence

__all__ = [
    "ChatClient",
    "ChatError",
    "TransientChatError",
    "chat_completions_url",
    "clean_reply",
]


class ChatError(RuntimeError):
    """A request failed and retrying will not help (e.g. HTTP 401/404)."""


class TransientChatError(ChatError):
    """A request failed in a way worth retrying (5xx, 429, connection, malformed reply)."""

    def __init__(self, message: str, *, kind: str = "error", retry_after: float | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.retry_after = retry_after


def chat_completions_url(endpoint: str) -> str:
    """``{endpoint}/v1/chat/completions``; endpoints already ending in ``/chat/completions`` or
    ``/v1`` are completed rather than doubled."""
    url = endpoint.strip().rstrip("/")
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ValueError(f"endpoint must be an http(s) URL, got {endpoint!r}")
    if url.endswith("/chat/completions"):
        return url
    if url.endswith("/v1"):
        return url + "/chat/completions"
    return url + "/v1/chat/completions"


def _is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_THINK = re.compile(r"<think>.*?</think>", re.S | re.I)
_LABEL = re.compile(r"^(?:caption|description)\s*:\s*", re.I)


def clean_reply(text: str) -> str:
    """One-line caption from a model reply: reasoning blocks, labels and wrapping quotes removed."""
    text = _THINK.sub(" ", text)
    text = " ".join(text.split())
    text = _LABEL.sub("", text)
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'`":
        text = text[1:-1].strip()
    return text


class ChatClient:
    """Minimal OpenAI-compatible chat client (standard library only)."""

    def __init__(self, endpoint: str, model: str, *, api_key: str | None = None,
                 timeout: float = 60.0, temperature: float = 0.8, max_tokens: int = 160) -> None:
        self.url = chat_completions_url(endpoint)
        self.model = model
        self.api_key = api_key
        self.timeout = timeout
        self.temperature = temperature
        self.max_tokens = max_tokens
        # Local servers are reached directly even when a proxy is configured for the outside.
        host = urllib.parse.urlparse(self.url).hostname
        handlers = [urllib.request.ProxyHandler({})] if _is_loopback(host) else []
        self._opener = urllib.request.build_opener(*handlers)

    def complete(self, messages: Sequence[Mapping[str, str]], *, seed: int | None = None) -> str:
        """The assistant's reply text. Raises TransientChatError or ChatError."""
        body = {
            "model": self.model,
            "messages": list(messages),
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "n": 1,
            "stream": False,
        }
        if seed is not None:
            body["seed"] = seed
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(self.url, data=json.dumps(body).encode("utf-8"),
                                     headers=headers, method="POST")
        try:
            with self._opener.open(req, timeout=self.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as e:
            detail = _error_detail(e)
            if e.code in (408, 429) or e.code >= 500:
                raise TransientChatError(f"HTTP {e.code} from {self.url}{detail}",
                                         kind=f"http {e.code}", retry_after=_retry_after(e)) from None
            raise ChatError(f"HTTP {e.code} from {self.url}{detail}") from None
        except (urllib.error.URLError, http.client.HTTPException, ConnectionError,
                TimeoutError, socket.timeout, OSError) as e:
            reason = getattr(e, "reason", e)
            raise TransientChatError(f"cannot reach {self.url}: {reason}", kind="connection") from None
        return _parse_reply(raw)


def _error_detail(e: urllib.error.HTTPError) -> str:
    try:
        text = e.read(300).decode("utf-8", "replace").strip()
    except Exception:  # noqa: BLE001 - the body is only decoration for the message
        text = ""
    return f": {text}" if text else ""


def _retry_after(e: urllib.error.HTTPError) -> float | None:
    value = e.headers.get("Retry-After") if e.headers else None
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def _parse_reply(raw: bytes) -> str:
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise TransientChatError(f"malformed reply (not JSON): {raw[:80]!r}", kind="malformed") from None
    try:
        content = data["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise TransientChatError(
            f"malformed reply (no choices[0].message.content): {str(data)[:120]}",
            kind="malformed") from None
    if not isinstance(content, str):
        raise TransientChatError(f"malformed reply (content is {type(content).__name__})",
                                 kind="malformed")
    text = clean_reply(content)
    if not text:
        raise TransientChatError("malformed reply (empty content)", kind="malformed")
    return text
