"""Where paraphrases come from: an OpenAI-compatible chat endpoint, or the built-in rules.

A backend answers one request, "``n`` paraphrases of this caption", and says what went wrong when
it could not: ``Retry`` for what may pass on a second try (429, 408, 409, 5xx, time-outs, lost
connections, malformed response bodies), ``CaptionFailed`` for what will not (another 4xx), and
``ModelError`` for what stops the whole run (bad key, unknown model or URL). Retrying is the
orchestrator's job (``lacoat.augment.run``), so every retry is counted, logged and honours the
server's ``Retry-After``; the ``openai`` client's own retries are switched off (``max_retries=0``):
they are invisible to the caller, and the client retries neither malformed bodies nor rejected
answers.
"""

from __future__ import annotations

import email.utils
import time
from dataclasses import dataclass
from typing import Protocol

from lacoat.augment.prompt import PromptTemplate
from lacoat.augment.rules import fingerprint, rule_paraphrases
from lacoat.augment.validate import Limits, parse_answer, rejection
from lacoat.errors import ModelError

RETRY_STATUS = {408, 409, 429}
FATAL_STATUS = {
    401: "the API key was refused",
    403: "access was denied",
    404: "the model or URL was not found",
}


@dataclass(frozen=True)
class Reply:
    """One answer of a backend.

    Attributes:
        text: the answer as received (for the record).
        paraphrases: the paraphrases read from it, or None when it could not be parsed.
        prompt_tokens: tokens of the request, as reported by the server (0 when not reported).
        completion_tokens: tokens of the answer, as reported by the server.
    """

    text: str
    paraphrases: list[str] | None
    prompt_tokens: int = 0
    completion_tokens: int = 0


class Retry(Exception):
    """A request that failed in a way a later try may not.

    Args:
        reason: short name counted in the statistics (``"429"``, ``"500"``, ``"timeout"``, ...).
        wait: seconds the server asked to wait (``Retry-After``), or None.
    """

    def __init__(self, reason: str, wait: float | None = None, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.wait = wait


class CaptionFailed(Exception):
    """A request that will fail again if repeated (e.g. HTTP 400 for this caption)."""


class Backend(Protocol):
    """What the orchestrator needs from a source of paraphrases."""

    name: str  # written into the ``backend`` column
    model: str  # part of the store key and the ``model`` column
    prompt_hash: str  # part of the store key and the ``prompt_hash`` column
    retries_help: bool  # False for deterministic backends: asking again gives the same answer

    async def ask(self, caption: str, n: int) -> Reply: ...

    async def aclose(self) -> None: ...


def retry_after(headers: object) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``retry-after`` (seconds or an HTTP date), if given."""
    get = getattr(headers, "get", None)
    if get is None:
        return None
    value = get("retry-after-ms")
    if value:
        try:
            return max(float(value) / 1000.0, 0.0)
        except ValueError:
            pass
    value = get("retry-after")
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        try:
            return max(email.utils.parsedate_to_datetime(value).timestamp() - time.time(), 0.0)
        except (TypeError, ValueError):
            return None


class OpenAIBackend:
    """Any OpenAI-compatible ``/v1/chat/completions`` endpoint (OpenAI, vLLM, Ollama, llama.cpp, LM Studio).

    Args:
        model: model name sent with each request.
        prompt: the prompt template.
        api_key: the key (local servers ignore it).
        base_url: the endpoint's base URL, e.g. ``http://localhost:8000/v1`` (None: OpenAI's, or
            ``$OPENAI_BASE_URL``).
        timeout: seconds one request may take before it counts as timed out and is retried.
    """

    name = "openai"
    retries_help = True

    def __init__(
        self, model: str, prompt: PromptTemplate, api_key: str, base_url: str | None, timeout: float
    ) -> None:
        import openai

        self.model = model
        self.prompt = prompt
        self.prompt_hash = prompt.hash
        self.client = openai.AsyncOpenAI(api_key=api_key, base_url=base_url, timeout=timeout, max_retries=0)

    async def ask(self, caption: str, n: int) -> Reply:
        import openai

        try:
            response = await self.client.chat.completions.create(
                model=self.model,
                messages=self.prompt.messages(caption, n),  # type: ignore[arg-type]
                temperature=self.prompt.temperature,
            )
        except openai.APITimeoutError as err:
            raise Retry("timeout") from err
        except openai.APIConnectionError as err:
            raise Retry("connection", detail=str(err.__cause__ or err)) from err
        except openai.APIStatusError as err:
            status = err.status_code
            if status in RETRY_STATUS or status >= 500:
                raise Retry(str(status), retry_after(err.response.headers), err.message) from err
            if status in FATAL_STATUS:
                raise ModelError(
                    f"{FATAL_STATUS[status]} (HTTP {status}) at {self.client.base_url} for model "
                    f"'{self.model}': {err.message}. Check --model, --base_url and --api_key_env."
                ) from err
            raise CaptionFailed(f"HTTP {status}: {err.message}") from err
        except (openai.APIResponseValidationError, ValueError) as err:  # the body is not (valid) JSON
            raise Retry("malformed", detail=str(err)) from err
        choices = getattr(response, "choices", None)
        message = getattr(choices[0], "message", None) if choices else None
        text = getattr(message, "content", None)
        if not isinstance(text, str):
            raise Retry("malformed", detail="no choices[0].message.content in the response")
        usage = getattr(response, "usage", None)
        return Reply(
            text=text,
            paraphrases=parse_answer(text, n),
            prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
            completion_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
        )

    async def aclose(self) -> None:
        await self.client.close()


class RulesBackend:
    """Deterministic paraphrases from the built-in rules (``lacoat.augment.rules``), no model needed.

    Args:
        limits: the checks every paraphrase must pass; candidates that fail them are skipped.
    """

    name = "rules"
    model = "rules"
    retries_help = False

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.prompt_hash = fingerprint()

    async def ask(self, caption: str, n: int) -> Reply:
        texts = rule_paraphrases(caption, n, lambda text: rejection(text, caption, self.limits) is None)
        return Reply(text="\n".join(texts), paraphrases=texts)

    async def aclose(self) -> None:
        return None
