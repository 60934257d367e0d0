"""A language model as judge, through any OpenAI-compatible ``/v1/chat/completions`` endpoint.

The API key is read from the environment variable named in the recipe at each request; it is
never stored on an object, logged, or put in an error message. Credentials written into the URL
(``https://user:key@host/v1``) are sent as HTTP Basic auth, as curl does, when no key is, and
masked wherever the URL is shown. Requests run concurrently (up to ``max_concurrency``); a failed
request is retried with exponential backoff; a request that still fails gives None for its sample.
When every request of a batch fails the reward raises, so the runner counts and reports the
failure instead of hiding it.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import logging
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rewards.errors import UserError
from rewards.redact import env_name_for_display, is_env_name, mask, redact
from rewards.registry import reward
from rewards.text import column, completion_fields, prompt_text
from rewards.threads import run_in_daemon_thread

logger = logging.getLogger(__name__)

PARALINGUISTIC_TEMPLATE = (
    "You grade a speech assistant's answer about the {dimension} of a speaker's voice.\n"
    "Question: {question}\n"
    "Reference label: {label}\n"
    "Answer: {answer}\n"
    "Does the answer agree with the reference label? Reply with one number: 1 if it does, 0 if not."
)
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
DEFAULT_API_KEY_ENV = "OPENAI_API_KEY"


class JudgeError(RuntimeError):
    """A judge request that failed after all retries."""


@dataclass(frozen=True, repr=False)
class JudgeClient:
    """Blocking chat-completion requests with retries; ``url`` is the base (``.../v1``) or full URL.

    ``api_key_env`` names the environment variable holding the key (None: send none). A value that
    cannot be a variable's name (a key pasted in its place), or a named variable that is not set,
    is refused here rather than sending requests without the key; only the default,
    ``OPENAI_API_KEY``, may be unset (a local server needs no key), with a warning.
    """

    url: str
    model: str
    api_key_env: str | None = DEFAULT_API_KEY_ENV
    timeout_s: float = 30.0
    retries: int = 2
    backoff_s: float = 0.5
    max_tokens: int = 16

    def __post_init__(self) -> None:
        name = self.api_key_env
        if name is None or name in os.environ:
            return
        if not is_env_name(name):
            raise UserError(
                f"judge at {redact(self.url)}: api_key_env must be the name of an environment "
                f"variable holding the key, but {mask(name)} is no variable name (a key pasted "
                "in its place?); export the key and give the variable's name"
            )
        if name != DEFAULT_API_KEY_ENV:
            raise UserError(
                f"judge at {redact(self.url)}: api_key_env: no environment variable "
                f"{env_name_for_display(name)} is set; export it, or set api_key_env: null for a "
                "server that needs no key"
            )
        if "@" not in urllib.parse.urlsplit(self.url).netloc:  # else the URL's credentials go
            _warn_no_key(redact(self.url))

    def __repr__(self) -> str:
        return f"JudgeClient(url={redact(self.url)!r}, model={self.model!r})"

    @property
    def endpoint(self) -> str:
        """The chat-completions URL, without the credentials the recipe's URL may carry."""
        parts = urllib.parse.urlsplit(self.url.rstrip("/"))
        url = parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()
        return url if url.endswith("/chat/completions") else url + "/chat/completions"

    def _authorization(self) -> str | None:
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        if key:
            return f"Bearer {key}"
        userinfo, at, _ = urllib.parse.urlsplit(self.url).netloc.rpartition("@")
        if not at:
            return None
        user, _, password = userinfo.partition(":")
        pair = f"{urllib.parse.unquote(user)}:{urllib.parse.unquote(password)}"
        return "Basic " + base64.b64encode(pair.encode()).decode()

    def complete(self, prompt: str) -> str:
        """The judge's reply to one user message."""
        body = json.dumps(
            {
                "model": self.model,
                "messages": [{"role": "user", "content": prompt}],
                "temperature": 0,
                "max_tokens": self.max_tokens,
            }
        ).encode()
        headers = {"Content-Type": "application/json"}
        authorization = self._authorization()
        if authorization:
            headers["Authorization"] = authorization
        shown = redact(self.endpoint)  # secret query parameters stay in the request only
        last = "no attempt"
        for attempt in range(max(0, self.retries) + 1):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            request = urllib.request.Request(self.endpoint, data=body, headers=headers)
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    reply = json.load(response)
                return reply["choices"][0]["message"]["content"] or ""
            except urllib.error.HTTPError as e:
                last = f"HTTP {e.code} from {shown}"
                if e.code != 429 and e.code < 500:
                    break  # the request itself is wrong: retrying will not help
            except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
                last = redact(f"{type(e).__name__} from {shown}: {getattr(e, 'reason', e)}")
            except (ValueError, KeyError, IndexError, TypeError):
                last = f"malformed reply from {shown}"
        raise JudgeError(f"judge request failed after {attempt + 1} tries: {last}")


@functools.cache
def _warn_no_key(url: str) -> None:
    logger.warning(
        "judge at %s: %s is not set, so requests carry no API key; set api_key_env: null if the "
        "server needs none",
        url,
        DEFAULT_API_KEY_ENV,
    )


def parse_score(reply: str) -> float | None:
    """The first number in the reply clipped to [0, 1]; "yes" / "no" read as 1 / 0."""
    match = _NUMBER.search(reply)
    if match:
        return min(1.0, max(0.0, float(match.group())))
    words = reply.strip().lower()
    if words.startswith("yes"):
        return 1.0
    if words.startswith("no"):
        return 0.0
    return None


async def judge_scores(
    client: JudgeClient, prompts: Sequence[str | None], max_concurrency: int = 8
) -> list[float | None]:
    """Score each prompt with the judge (None prompts are skipped); raises if every request fails."""
    limit = asyncio.Semaphore(max(1, max_concurrency))

    async def one(prompt: str) -> float | JudgeError | None:
        async with limit:
            try:
                return parse_score(await run_in_daemon_thread(client.complete, prompt))
            except JudgeError as e:
                logger.warning("%s", e)
                return e

    todo = [i for i, p in enumerate(prompts) if p is not None]
    replies = await asyncio.gather(*(one(prompts[i]) for i in todo))
    failures = [r for r in replies if isinstance(r, JudgeError)]
    if todo and len(failures) == len(todo):
        raise failures[0]
    scores: list[float | None] = [None] * len(prompts)
    for i, reply in zip(todo, replies, strict=True):
        scores[i] = None if isinstance(reply, JudgeError) else reply
    return scores


@reward("paralinguistic_judge")
class ParalinguisticJudge:
    """Ask the judge whether each answer agrees with the row's free-text label.

    ``template`` is formatted with ``question`` (the prompt's user text), ``label``, ``answer`` and
    ``dimension``. Rows without a label get None. Each request waits ``request_timeout_s``; give
    the spec's ``timeout_s`` room for the retries: ``(retries + 1) · request_timeout_s`` + backoff.
    A class, so that the client (and its ``api_key_env`` check) is made once, when the recipe's
    rewards are built.
    """

    def __init__(
        self,
        *,
        url: str,
        model: str,
        api_key_env: str | None = DEFAULT_API_KEY_ENV,
        template: str = PARALINGUISTIC_TEMPLATE,
        label_column: str = "label",
        dimension_column: str = "task",
        request_timeout_s: float = 30.0,
        retries: int = 2,
        backoff_s: float = 0.5,
        max_concurrency: int = 8,
    ):
        self.client = JudgeClient(url, model, api_key_env, request_timeout_s, retries, backoff_s)
        self.template = template
        self.label_column = label_column
        self.dimension_column = dimension_column
        self.max_concurrency = max_concurrency
        self.__name__ = "paralinguistic_judge"

    def __repr__(self) -> str:
        return f"ParalinguisticJudge({self.client!r})"

    async def __call__(
        self, prompts: list[Any], completions: list[Any], **kwargs: Any
    ) -> list[float | None]:
        labels = column(kwargs, self.label_column, "paralinguistic_judge")
        dims = kwargs.get(self.dimension_column) or [""] * len(completions)
        prompts = prompts or [None] * len(completions)
        messages = [
            None
            if label is None
            else self.template.format(
                question=prompt_text(prompt), label=label, answer=parsed.answer, dimension=dim
            )
            for prompt, parsed, label, dim in zip(
                prompts, completion_fields(completions, kwargs), labels, dims, strict=True
            )
        ]
        return await judge_scores(self.client, messages, self.max_concurrency)
