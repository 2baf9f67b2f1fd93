"""``lacoat augment``: paraphrase every caption of a CSV, durably, and write them with provenance.

Flow: read the captions (``inputs``), look up the answers already in the store (``store``), ask the
backend (``backends``) for the rest with at most ``concurrency`` requests in flight, check each answer
(``validate``) and store it as soon as it is accepted; then write the output CSV (atomically) and a
report of the captions that got no acceptable answer. Killing the process at any point loses only
the requests in flight; the next run asks for the rest.

Retries: time-outs, lost connections, 408/409/429/5xx and malformed bodies are retried with
exponential back-off (``backoff`` × 2^k, jittered, at most ``max_wait``), or after the server's
``Retry-After`` — during which no worker sends anything. Answers that cannot be parsed, or hold fewer
than ``n`` acceptable paraphrases, are asked again at once (accepted paraphrases are kept). After
``max_attempts`` a caption is recorded as failed and reported; a later run tries it again (except
with the deterministic rules backend, whose answer would be the same).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pandas as pd

from lacoat.augment.backends import Backend, CaptionFailed, OpenAIBackend, Retry, RulesBackend
from lacoat.augment.inputs import read_captions
from lacoat.augment.prompt import PromptTemplate
from lacoat.augment.store import Answer, AnswerStore, now
from lacoat.augment.validate import Limits, select
from lacoat.data.table import Policy
from lacoat.errors import DataError, ModelError
from lacoat.io import atomic_write

log = logging.getLogger(__name__)

OUTPUT_COLUMNS = ["file_name", "caption", "original_caption", "model", "prompt_hash", "backend", "created_at"]
FAILURE_COLUMNS = ["file_name", "caption", "reason", "attempts"]
ABORT_AFTER_CONNECTION_ERRORS = 20  # in a row, over all workers: the endpoint is not there


@dataclass
class AugmentStats:
    """What a run did. ``problems`` counts, per kind, the requests that did not give an accepted answer."""

    rows: int = 0  # caption rows in the input
    unique: int = 0  # distinct caption texts (each asked once)
    cached: int = 0  # answered from the store, not asked
    failed_before: int = 0  # failed in an earlier run and not asked again (deterministic backends)
    to_ask: int = 0  # asked in this run
    requests: int = 0  # requests sent (retries included)
    answered: int = 0  # captions answered in this run
    failed: int = 0  # captions without an acceptable answer after all attempts
    problems: Counter[str] = field(default_factory=Counter)
    rejected: Counter[str] = field(default_factory=Counter)  # paraphrases rejected, by reason
    prompt_tokens: int = 0
    completion_tokens: int = 0
    estimated_prompt_tokens: int = 0  # dry run: chars / 4 of what would be sent
    estimated_completion_tokens: int = 0
    written: int = 0  # output rows
    seconds: float = 0.0

    @property
    def retries(self) -> int:
        """Requests beyond the first per caption."""
        return max(self.requests - self.answered - self.failed, 0)

    def summary(self) -> str:
        problems = ", ".join(f"{k} ×{v}" for k, v in sorted(self.problems.items())) or "none"
        rejected = ", ".join(f"{k} ×{v}" for k, v in sorted(self.rejected.items())) or "none"
        return (
            f"{self.rows} captions ({self.unique} distinct): {self.cached} from the store, {self.answered} "
            f"answered, {self.failed + self.failed_before} failed; {self.requests} requests, "
            f"{self.retries} retries "
            f"(problems: {problems}; paraphrases rejected: {rejected}); tokens in/out "
            f"{self.prompt_tokens}/{self.completion_tokens}; {self.written} rows written in "
            f"{self.seconds:.1f} s"
        )


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry.

    Args:
        max_attempts: requests per caption at most.
        backoff: first back-off in seconds (doubled per attempt, with jitter) when the server gives no
            ``Retry-After``.
        max_wait: longest single wait in seconds (``Retry-After`` included).
    """

    max_attempts: int = 6
    backoff: float = 1.0
    max_wait: float = 120.0

    def delay(self, attempt: int, rng: random.Random) -> float:
        return min(self.backoff * 2 ** (attempt - 1) * rng.uniform(0.5, 1.0), self.max_wait)


class Orchestrator:
    """Asks ``backend`` for every caption of a list, at most ``concurrency`` at a time, storing answers.

    Args:
        backend: where the paraphrases come from.
        store: where accepted answers are kept.
        n: paraphrases per caption.
        limits: the checks each paraphrase must pass.
        policy: retry settings.
        concurrency: requests in flight at most.
        stats: counters to update.
        progress: show a progress bar.
    """

    def __init__(
        self,
        backend: Backend,
        store: AnswerStore,
        n: int,
        limits: Limits,
        policy: RetryPolicy,
        concurrency: int,
        stats: AugmentStats,
        progress: bool = True,
    ) -> None:
        self.backend, self.store, self.n, self.limits, self.policy = backend, store, n, limits, policy
        self.concurrency = concurrency
        self.stats = stats
        self.progress = progress
        self.rng = random.Random(0)
        self.not_before = 0.0  # loop time before which nobody sends (Retry-After)
        self.connection_errors = 0
        self.bar = None

    async def run(self, captions: list[str]) -> None:
        """Answer every caption (or record it as failed); a ``ModelError`` stops the run."""
        from tqdm.auto import tqdm

        queue: asyncio.Queue[str] = asyncio.Queue()
        for caption in captions:
            queue.put_nowait(caption)
        self.bar = tqdm(total=len(captions), desc="augment", unit="caption", disable=not self.progress)

        async def worker() -> None:
            while not queue.empty():
                await self.one(queue.get_nowait())
                self.bar.update(1)

        tasks = [asyncio.ensure_future(worker()) for _ in range(min(self.concurrency, len(captions)))]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.bar.close()

    def _show(self) -> None:
        s = self.stats
        self.bar.set_postfix(
            tok_in=s.prompt_tokens,
            tok_out=s.completion_tokens,
            retries=s.retries,
            failed=s.failed,
            refresh=False,
        )

    async def _wait_turn(self) -> None:
        loop = asyncio.get_running_loop()
        while (delay := self.not_before - loop.time()) > 0:
            await asyncio.sleep(delay)

    async def one(self, caption: str) -> None:
        """Ask for ``caption`` until ``n`` acceptable paraphrases are in, or the attempts run out."""
        stats, policy = self.stats, self.policy
        accepted: list[str] = []
        raw: list[str] = []
        tokens = [0, 0]
        reason, attempts = "", 0
        while attempts < policy.max_attempts:
            await self._wait_turn()
            attempts += 1
            stats.requests += 1
            try:
                reply = await self.backend.ask(caption, self.n)
            except Retry as err:
                stats.problems[err.reason] += 1
                reason = str(err)
                self._count_connection_error(err)
                if attempts >= policy.max_attempts:
                    break
                wait = (
                    policy.delay(attempts, self.rng) if err.wait is None else min(err.wait, policy.max_wait)
                )
                if err.wait is not None:
                    self.not_before = max(self.not_before, asyncio.get_running_loop().time() + wait)
                log.info(
                    "retry %d/%d in %.1f s (%s%s): %r",
                    attempts + 1,
                    policy.max_attempts,
                    wait,
                    err.reason,
                    ", Retry-After" if err.wait is not None else "",
                    caption,
                )
                self._show()
                await asyncio.sleep(wait)
                continue
            except CaptionFailed as err:
                stats.problems["refused"] += 1
                reason = str(err)
                break
            self.connection_errors = 0
            stats.prompt_tokens += reply.prompt_tokens
            stats.completion_tokens += reply.completion_tokens
            tokens[0] += reply.prompt_tokens
            tokens[1] += reply.completion_tokens
            raw.append(reply.text)
            if reply.paraphrases is None:
                stats.problems["unparseable"] += 1
                reason = f"unparseable answer: {reply.text[:200]!r}"
            else:
                taken, rejected = select(reply.paraphrases, caption, self.n, self.limits, accepted)
                accepted += taken
                stats.rejected.update(rejected)
                if len(accepted) >= self.n:
                    answer = Answer(
                        caption, accepted, self.backend.name, "\n---\n".join(raw), attempts, *tokens, now()
                    )
                    self.store.put(self.backend.model, self.backend.prompt_hash, self.n, answer)
                    stats.answered += 1
                    self._show()
                    return
                stats.problems["rejected"] += 1
                why = ", ".join(rejected) or "too few"
                reason = f"{len(accepted)} of {self.n} acceptable paraphrases (rejected: {why})"
            if not self.backend.retries_help or attempts >= policy.max_attempts:
                break
            log.info("retry %d/%d at once (%s): %r", attempts + 1, policy.max_attempts, reason[:80], caption)
            self._show()
        stats.failed += 1
        self.store.put_failure(
            self.backend.model, self.backend.prompt_hash, self.n, caption, reason, attempts, accepted
        )
        log.warning("no acceptable paraphrases for %r after %d attempt(s): %s", caption, attempts, reason)
        self._show()

    def _count_connection_error(self, err: Retry) -> None:
        if err.reason != "connection":
            return
        self.connection_errors += 1
        if self.connection_errors >= ABORT_AFTER_CONNECTION_ERRORS:
            raise ModelError(
                f"{self.connection_errors} connection errors in a row ({err}); is the endpoint running "
                "and --base_url right? Answers received so far are stored; re-run to resume."
            )


def make_backend(
    backend: str,
    model: str | None,
    base_url: str | None,
    api_key_env: str,
    prompt: str | None,
    timeout: float,
    limits: Limits,
    need_key: bool,
) -> Backend:
    """The backend the command line names (the OpenAI one needs ``model``; the key only to send)."""
    if backend == "rules":
        return RulesBackend(limits)
    if not model:
        raise ModelError(
            "--model is required with --backend openai (e.g. --model gpt-4o-mini), or use --backend rules"
        )
    api_key = os.environ.get(api_key_env)
    if not api_key:
        if need_key and not (base_url or os.environ.get("OPENAI_BASE_URL")):
            raise ModelError(
                f"no API key: set ${api_key_env} (or name another variable with --api_key_env), "
                "or point --base_url at a local OpenAI-compatible server."
            )
        api_key = "unused"  # local servers (vLLM, Ollama, llama.cpp, LM Studio) accept any key
    return OpenAIBackend(model, PromptTemplate.load(prompt), api_key, base_url, timeout)


def estimate_tokens(backend: Backend, captions: list[str], n: int) -> tuple[int, int]:
    """Rough prompt and completion tokens (characters / 4) of asking for ``captions``."""
    if not isinstance(backend, OpenAIBackend):
        return 0, 0
    prompt = sum(len(m["content"]) + 4 for c in captions for m in backend.prompt.messages(c, n))
    completion = sum(n * (len(c) + 4) + 4 for c in captions)
    return prompt // 4, completion // 4


def write_atomic(df: pd.DataFrame, path: Path) -> None:
    """Write ``df`` as CSV to ``path`` through a temporary file, so a reader never sees half a file."""
    with atomic_write(path, "w") as handle:
        df.to_csv(handle, index=False)


def write_outputs(
    table: pd.DataFrame,
    answers: dict[str, Answer],
    failures: dict[str, tuple[str, int]],
    backend: Backend,
    n: int,
    output: Path,
) -> int:
    """Write the paraphrases of ``table``'s captions and the failure report; returns the rows written."""
    rows = [
        (name, text, caption, backend.model, backend.prompt_hash, answer.backend, answer.created_at)
        for name, caption in zip(table["file_name"], table["caption"], strict=True)
        if (answer := answers.get(caption)) is not None
        for text in answer.paraphrases[:n]
    ]
    write_atomic(pd.DataFrame(rows, columns=OUTPUT_COLUMNS), output)
    report = failure_report_path(output)
    failed = [
        (name, caption, *failures.get(caption, ("not asked", 0)))
        for name, caption in zip(table["file_name"], table["caption"], strict=True)
        if caption not in answers
    ]
    if failed:
        write_atomic(pd.DataFrame(failed, columns=FAILURE_COLUMNS), report)
    elif report.exists():
        report.unlink()  # a stale report of an earlier run
    return len(rows)


def failure_report_path(output: str | Path) -> Path:
    """Where the captions without paraphrases are listed: ``OUTPUT.failures.csv``."""
    output = Path(output)
    return output.with_name(output.name + ".failures.csv")


def augment(
    input: str,
    output: str,
    n: int = 2,
    backend: Literal["openai", "rules"] = "openai",
    model: str | None = None,
    base_url: str | None = None,
    api_key_env: str = "OPENAI_API_KEY",
    prompt: str | None = None,
    store: str | None = None,
    concurrency: int = 8,
    max_attempts: int = 6,
    timeout: float = 60.0,
    backoff: float = 1.0,
    max_wait: float = 120.0,
    min_length_ratio: float = 0.5,
    max_length_ratio: float = 2.0,
    limit: int | None = None,
    dry_run: bool = False,
    audio_pattern: str | None = None,
    on_bad_caption: Policy = "error",
    progress: bool = True,
) -> AugmentStats:
    """Paraphrase the captions of a CSV with an LLM (or the built-in rules), written with provenance.

    Args:
        input: captions CSV: Clotho (file_name,caption_1..caption_5), AudioCaps
            (audiocap_id,youtube_id,start_time,caption) or plain file_name,caption.
        output: CSV to write: file_name,caption,original_caption,model,prompt_hash,backend,created_at.
        n: paraphrases per caption.
        backend: ``openai`` (any OpenAI-compatible chat-completions endpoint) or ``rules`` (offline,
            deterministic, no model).
        model: model name for the openai backend (e.g. gpt-4o-mini, or the name a local server serves).
        base_url: endpoint base URL, e.g. http://localhost:8000/v1 (default: OpenAI, or $OPENAI_BASE_URL).
        api_key_env: name of the environment variable holding the API key (local servers need none).
        prompt: prompt template YAML (default: lacoat/augment/default_prompt.yaml).
        store: SQLite file of answers, reused by re-runs (default: OUTPUT.answers.sqlite).
        concurrency: requests in flight at most.
        max_attempts: requests per caption at most before it is reported as failed.
        timeout: seconds a request may take before it is retried.
        backoff: first back-off in seconds after a failed request without Retry-After (doubles per attempt).
        max_wait: longest single wait in seconds, Retry-After included.
        min_length_ratio: shortest acceptable paraphrase, as a fraction of the caption's length.
        max_length_ratio: longest acceptable paraphrase, as a multiple of the caption's length.
        limit: paraphrase only the first LIMIT distinct captions (to try a prompt or a model cheaply).
        dry_run: count the requests a run would send and estimate their tokens; send nothing.
        audio_pattern: AudioCaps input: the audio_pattern of the AudioCaps source you train with.
        on_bad_caption: ``error`` stops at a bad input row (blank caption, line break, ...), ``skip``
            leaves it out with a warning.
        progress: show a progress bar.

    Returns:
        What the run did (see ``AugmentStats``).
    """
    start = time.perf_counter()
    if n < 1 or concurrency < 1 or max_attempts < 1:
        raise DataError(
            "--n, --concurrency and --max_attempts must be at least 1 "
            f"(got {n}, {concurrency}, {max_attempts})"
        )
    if not 0 < min_length_ratio < 1 < max_length_ratio:
        raise DataError(
            "need 0 < --min_length_ratio < 1 < --max_length_ratio "
            f"(got {min_length_ratio}, {max_length_ratio})"
        )
    output_path = Path(output)
    if output_path.resolve() == Path(input).resolve():
        raise DataError(f"--output '{output}' is the input file; choose another path.")
    limits = Limits(min_length_ratio, max_length_ratio)
    table, kind = read_captions(input, on_bad_caption, audio_pattern)
    captions = list(dict.fromkeys(table["caption"]))
    if limit is not None:
        captions = captions[:limit]
        table = table[table["caption"].isin(set(captions))]
    stats = AugmentStats(rows=len(table), unique=len(captions))
    log.info("%s: %d captions (%d distinct), %s format", input, len(table), len(captions), kind)
    chosen = make_backend(
        backend, model, base_url, api_key_env, prompt, timeout, limits, need_key=not dry_run
    )
    store_path = Path(store) if store else output_path.with_name(output_path.name + ".answers.sqlite")
    try:
        with AnswerStore(store_path) as answers_store:
            key = (chosen.model, chosen.prompt_hash, n)
            answers = answers_store.answers(*key)
            # a deterministic backend would fail the same way again: its failures are final
            done = answers.keys() | (set() if chosen.retries_help else answers_store.failures(*key).keys())
            todo = [c for c in captions if c not in done]
            stats.cached = sum(c in answers for c in captions)
            stats.to_ask = len(todo)
            stats.failed_before = len(captions) - stats.cached - stats.to_ask
            if dry_run:
                stats.estimated_prompt_tokens, stats.estimated_completion_tokens = estimate_tokens(
                    chosen, todo, n
                )
                return stats
            if todo:
                log.info(
                    "%d answers in %s reused; asking %s for %d",
                    stats.cached,
                    store_path,
                    chosen.model,
                    len(todo),
                )
                orchestrator = Orchestrator(
                    chosen,
                    answers_store,
                    n,
                    limits,
                    RetryPolicy(max_attempts, backoff, max_wait),
                    concurrency,
                    stats,
                    progress,
                )
                asyncio.run(_run_and_close(orchestrator, chosen, todo))
            answers = answers_store.answers(*key)
            failures = answers_store.failures(*key)
        output_path.parent.mkdir(parents=True, exist_ok=True)
        stats.written = write_outputs(table, answers, failures, chosen, n, output_path)
    finally:
        stats.seconds = time.perf_counter() - start
    return stats


async def _run_and_close(orchestrator: Orchestrator, backend: Backend, captions: list[str]) -> None:
    try:
        await orchestrator.run(captions)
    finally:
        await backend.aclose()
