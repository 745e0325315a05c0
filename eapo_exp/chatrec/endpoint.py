"""Chat completions from any OpenAI-compatible endpoint (OpenAI, vLLM, TGI, `transformers
serve`, llama.cpp server) through the official `openai` client, with a bounded number of
requests in flight, retries and an on-disk reply cache.

Retries are the client's own: exponential backoff with jitter (0.5 s doubling, at most 8 s,
or the server's Retry-After) on 408/409/429/5xx answers, timeouts and connection errors,
`retries` times. A request that still fails stops the evaluation with one ChatEndpointError
naming the endpoint.

The cache holds one JSON file per reply, keyed by the model name and the request (messages,
temperature, max_tokens), not by the URL: the same model behind another address reuses it.
The API key is read from the environment variable the config names, at construction, and
is kept only inside the client: never written to the cache, logs or outputs.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from eapo_exp.cache import disk_errors, fingerprint
from eapo_exp.errors import ConfigError, EapoError

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
NO_KEY = "not-needed"  # the client insists on a key; local servers ignore it


class ChatEndpointError(EapoError):
    """The chat endpoint cannot be reached or refuses the requests."""


@dataclass
class Reply:
    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None
    cached: bool = False


@dataclass
class EndpointStats:
    """What this endpoint object sent: completions asked for (cache misses), HTTP requests
    made for them (retries included), and replies served from the cache."""

    requests: int = 0
    http_requests: int = 0
    cached: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, name: str, value: int = 1) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + value)

    def as_dict(self) -> dict:
        return {"requests": self.requests, "http_requests": self.http_requests,
                "cached": self.cached}


def display_url(url: str) -> str:
    """The URL without any user:password part (safe to print)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def read_api_key(env_name: str) -> str:
    """The key from the environment variable `env_name` ("" = no key needed)."""
    if not env_name:
        return NO_KEY
    if not _ENV_NAME.match(env_name):  # don't echo it: it may be the key itself
        raise ConfigError("chatrec.api_key_env must be the name of an environment variable "
                          "(e.g. OPENAI_API_KEY), not the key")
    key = os.environ.get(env_name, "")
    if not key:
        raise ConfigError(f"chatrec.api_key_env names {env_name}, which is not set; export "
                          f"{env_name}=<your key> or set chatrec.api_key_env='' for a server "
                          "that needs no key")
    return key


def check_endpoint_config(base_url: str, model: str, api_key_env: str) -> None:
    """The settings a request needs, as ConfigErrors (run at startup by validation)."""
    if urlsplit(base_url).scheme not in ("http", "https") or not urlsplit(base_url).hostname:
        raise ConfigError(f"chatrec.base_url must be an http(s) URL such as "
                          f"http://127.0.0.1:8000/v1; got {display_url(base_url)!r}")
    if not model:
        raise ConfigError("chatrec.model is empty: set it to the endpoint's model name "
                          "(for `transformers serve`, the path it serves)")
    read_api_key(api_key_env)


class ReplyCache:
    """One JSON file per reply under `root/<key[:2]>/<key>.json`, written atomically."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    @staticmethod
    def key(model: str, request: dict) -> str:
        return fingerprint({"format": CACHE_FORMAT, "model": model, "request": request},
                           length=40)

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> Reply | None:
        path = self.path(key)
        try:
            stored = json.loads(path.read_text())
            return Reply(**stored["reply"], cached=True)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as error:
            log.warning("ignoring the unreadable cached reply %s (%s)", path, error)
            return None

    def put(self, key: str, model: str, request: dict, reply: Reply) -> None:
        path = self.path(key)
        payload = {"model": model, "request": request,
                   "reply": {"text": reply.text, "prompt_tokens": reply.prompt_tokens,
                             "completion_tokens": reply.completion_tokens,
                             "finish_reason": reply.finish_reason}}
        with disk_errors(self.root, "chatrec.cache_dir"):
            path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp",
                                             delete=False) as handle:
                json.dump(payload, handle)
            os.replace(handle.name, path)


class ChatEndpoint:
    """Chat completions from `model` at `base_url`, cached under `cache_dir` (reuse_cached:
    False asks again and overwrites). Nothing is checked or read from the environment until
    the first request (check_endpoint_config checks the settings at startup)."""

    def __init__(self, base_url: str, model: str, temperature: float = 0.0,
                 max_tokens: int = 512, concurrency: int = 4, timeout: float = 120.0,
                 retries: int = 4, api_key_env: str = "", cache_dir: str | None = None,
                 reuse_cached: bool = True) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.temperature = float(temperature)
        self.max_tokens = int(max_tokens)
        self.concurrency = int(concurrency)
        self.timeout = float(timeout)
        self.retries = int(retries)
        self.cache = ReplyCache(cache_dir) if cache_dir else None
        self.reuse_cached = bool(reuse_cached)
        self.api_key_env = api_key_env
        self.stats = EndpointStats()
        self._client = None
        self._client_lock = threading.Lock()

    @property
    def where(self) -> str:
        return f"{display_url(self.base_url)} (model {self.model})"

    def _make_client(self):
        try:
            import openai
        except ImportError:
            raise ConfigError("method=chatrec needs the `openai` package: "
                              "pip install -e '.[chatrec]'") from None
        http = openai.DefaultHttpxClient(
            event_hooks={"request": [lambda request: self.stats.add("http_requests")]})
        check_endpoint_config(self.base_url, self.model, self.api_key_env)
        return openai.OpenAI(base_url=self.base_url, api_key=read_api_key(self.api_key_env),
                             timeout=self.timeout, max_retries=self.retries, http_client=http)

    @property
    def client(self):
        with self._client_lock:  # made on the first request that the cache cannot answer
            if self._client is None:
                self._client = self._make_client()
            return self._client

    def request(self, messages: list[dict]) -> dict:
        return {"messages": messages, "temperature": self.temperature,
                "max_tokens": self.max_tokens}

    def complete(self, messages: list[dict]) -> Reply:
        """One reply, from the cache when this (model, request) was answered before."""
        request = self.request(messages)
        key = ReplyCache.key(self.model, request) if self.cache else None
        if key is not None and self.reuse_cached:
            cached = self.cache.get(key)
            if cached is not None:
                self.stats.add("cached")
                return cached
        reply = self._send(request)
        if key is not None:
            self.cache.put(key, self.model, request, reply)
        return reply

    def _send(self, request: dict) -> Reply:
        import openai

        self.stats.add("requests")
        try:
            response = self.client.chat.completions.create(model=self.model, **request)
        except openai.APITimeoutError:
            raise ChatEndpointError(
                f"the chat endpoint {self.where} did not answer within {self.timeout:g} s "
                f"({self.retries + 1} tries); raise chatrec.timeout or check the server"
            ) from None
        except openai.APIConnectionError as error:
            raise ChatEndpointError(
                f"cannot reach the chat endpoint {self.where} ({self.retries + 1} tries: "
                f"{error.__cause__ or error}); start the server or set chatrec.base_url"
            ) from None
        except openai.AuthenticationError:
            raise ChatEndpointError(f"the chat endpoint {self.where} refused the API key; set "
                                    "the variable chatrec.api_key_env names") from None
        except openai.APIStatusError as error:
            raise ChatEndpointError(f"the chat endpoint {self.where} answered "
                                    f"{error.status_code}: {_one_line(error.message)}") from None
        return _reply(response)

    def complete_all(self, conversations: Sequence[list[dict]],
                     on_done: Callable[[], None] | None = None) -> list[Reply]:
        """Replies in input order, at most `concurrency` requests in flight. The first
        failure cancels the requests not yet sent and is raised."""
        def one(messages):
            reply = self.complete(messages)
            if on_done is not None:
                on_done()
            return reply

        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            futures = [pool.submit(one, messages) for messages in conversations]
            try:
                return [future.result() for future in futures]
            except BaseException:
                for future in futures:
                    future.cancel()
                raise

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


def _reply(response) -> Reply:
    choice = response.choices[0] if response.choices else None
    text = (choice.message.content if choice is not None and choice.message else None) or ""
    usage = response.usage
    return Reply(text=text,
                 prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
                 completion_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
                 finish_reason=getattr(choice, "finish_reason", None))


def _one_line(text: str, limit: int = 300) -> str:
    return " ".join(str(text).split())[:limit]
