"""lacoat augment end to end: the real openai client against a scripted OpenAI-compatible server.

The server (stdlib ``http.server`` on 127.0.0.1) answers ``POST /v1/chat/completions`` per caption
from a script: paraphrases, 429 with Retry-After, 500, malformed JSON, slow replies (past the client's
time-out), answers identical to the caption, prose without a list, or a hang. It records every request.
"""

import contextlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pandas as pd
import pytest

from lacoat.augment.prompt import PromptTemplate
from lacoat.augment.run import OUTPUT_COLUMNS, failure_report_path
from lacoat.cli import main

PROMPT = "user: |-\n  N={n}\n  CAPTION={caption}\ntemperature: 0.5\n"


def paraphrases(caption, n):
    return [f"{caption} (version {i + 1})" for i in range(n)]


class FakeLLM:
    """A scripted OpenAI-compatible chat-completions server on 127.0.0.1.

    Args:
        script: caption -> actions for its successive requests (then ``ok``): ``ok``, ``429``, ``500``,
            ``401``, ``malformed``, ``slow``, ``identical``, ``prose``.
    """

    def __init__(self, script=None):
        self.script = {k: list(v) for k, v in (script or {}).items()}
        self.received = Counter()  # requests per caption
        self.answered = Counter()  # paraphrase answers sent per caption
        self.times = defaultdict(list)  # caption -> [(time, action)]
        self.bodies = []
        self.lock = threading.Lock()
        self.answer_limit = None  # after this many paraphrase answers, requests hang until `release`
        self.release = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                content = body["messages"][-1]["content"]
                n = int(content.split("\n")[0].removeprefix("N="))
                caption = content.split("\n", 1)[1].removeprefix("CAPTION=")
                with server.lock:
                    server.bodies.append(body)
                    server.received[caption] += 1
                    queue = server.script.get(caption, [])
                    action = queue.pop(0) if queue else "ok"
                    hang = (
                        server.answer_limit is not None
                        and sum(server.answered.values()) >= server.answer_limit
                    )
                    if action == "ok" and not hang:
                        server.answered[caption] += 1
                    server.times[caption].append((time.monotonic(), "hang" if hang else action))
                if hang:
                    server.release.wait(30)
                    return  # the client is gone by now
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # client timed out
                    self.respond(action, caption, n, body)

            def respond(self, action, caption, n, body):
                status, headers, content = 200, {}, None
                if action in ("ok", "slow"):
                    if action == "slow":
                        time.sleep(2.5)  # past the client's time-out
                    content = json.dumps(paraphrases(caption, n))
                elif action == "identical":
                    content = json.dumps([caption.upper()] * n)
                elif action == "prose":
                    content = "I would be happy to help with that caption!"
                if content is not None:
                    data = {
                        "id": "chatcmpl-1",
                        "object": "chat.completion",
                        "created": 0,
                        "model": body["model"],
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": content},
                                "finish_reason": "stop",
                            }
                        ],
                        "usage": {"prompt_tokens": 20, "completion_tokens": 10, "total_tokens": 30},
                    }
                    payload = json.dumps(data).encode()
                elif action == "malformed":
                    payload = b'{"id": "chatcmpl-1", "choices": [{"message": {"content": "["'
                else:
                    status = int(action)
                    payload = json.dumps({"error": {"message": f"scripted {action}", "type": "x"}}).encode()
                    if action == "429":
                        headers["Retry-After"] = "1"
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(payload)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self):
        return f"http://127.0.0.1:{self.httpd.server_port}/v1"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def write_captions(path, captions):
    pd.DataFrame(
        {"file_name": [f"clip {i}, ' é.wav" for i in range(len(captions))], "caption": captions}
    ).to_csv(path, index=False)


def args(url, tmp_path, captions_csv, out, *extra, timeout=1.0):
    prompt = tmp_path / "prompt.yaml"
    prompt.write_text(PROMPT)
    return [
        "augment",
        "--input", str(captions_csv),
        "--output", str(out),
        "--n", "2",
        "--model", "fake-model",
        "--base_url", url,
        "--api_key_env", "LACOAT_TEST_NO_SUCH_KEY",
        "--prompt", str(prompt),
        "--timeout", str(timeout),
        "--backoff", "0.05",
        "--max_attempts", "3",
        "--no_progress",
        *extra,
    ]  # fmt: skip


CAPTIONS = [f"caption {i}: a dog barks while a car passes by" for i in range(8)]
SCRIPT = {
    CAPTIONS[0]: ["429"],
    CAPTIONS[1]: ["500", "500"],
    CAPTIONS[2]: ["malformed"],
    CAPTIONS[3]: ["slow"],
    CAPTIONS[4]: ["identical"],
    CAPTIONS[5]: ["prose"],
    CAPTIONS[6]: ["500"] * 10,  # never answers: reported after 3 attempts
}


def test_run_survives_every_failure_mode_and_reports_them(tmp_path, capsys):
    captions_csv, out = tmp_path / "captions.csv", tmp_path / "aug.csv"
    write_captions(captions_csv, [*CAPTIONS, CAPTIONS[7]])  # the last caption twice (two clips)
    with FakeLLM(SCRIPT) as server:
        main(args(server.url, tmp_path, captions_csv, out, "--concurrency", "4"))
        printed = capsys.readouterr().out

        assert dict(server.received) == {
            CAPTIONS[0]: 2, CAPTIONS[1]: 3, CAPTIONS[2]: 2, CAPTIONS[3]: 2,
            CAPTIONS[4]: 2, CAPTIONS[5]: 2, CAPTIONS[6]: 3, CAPTIONS[7]: 1,
        }  # fmt: skip
        (t429, _), (t_next, _) = server.times[CAPTIONS[0]]
        assert t_next - t429 >= 0.9  # Retry-After: 1 was honoured
        problems = ("429 ×1", "500 ×5", "timeout ×1", "malformed ×1", "unparseable ×1", "rejected ×1")
        for problem in problems:
            assert problem in printed, printed
        assert "identical ×2" in printed and "7 answered, 1 failed" in printed and "tokens in/out" in printed

        df = pd.read_csv(out, dtype=str, keep_default_na=False)
        assert df.columns.tolist() == OUTPUT_COLUMNS
        done = [c for c in CAPTIONS if c != CAPTIONS[6]] + [CAPTIONS[7]]
        assert df["original_caption"].tolist() == [c for c in done for _ in range(2)]
        assert df["caption"].tolist() == [p for c in done for p in paraphrases(c, 2)]
        assert df["file_name"].iloc[-1] == "clip 8, ' é.wav"  # file names as written
        assert set(df["model"]) == {"fake-model"} and set(df["backend"]) == {"openai"}
        assert set(df["prompt_hash"]) == {PromptTemplate.load(tmp_path / "prompt.yaml").hash}
        report = pd.read_csv(failure_report_path(out), dtype=str, keep_default_na=False)
        assert report["caption"].tolist() == [CAPTIONS[6]] and report["attempts"].tolist() == ["3"]
        assert report["reason"].iloc[0].startswith("500")
        assert server.bodies[0]["temperature"] == 0.5 and server.bodies[0]["model"] == "fake-model"

        # a re-run asks only for the failed caption (it now succeeds) and completes the output
        server.script[CAPTIONS[6]] = []
        before = Counter(server.received)
        main(args(server.url, tmp_path, captions_csv, out, "--dry_run"))
        dry = capsys.readouterr().out
        assert "1 request(s) to send" in dry and server.received == before
        assert int(re.search(r"(\d+) prompt \+ (\d+) completion", dry).group(1)) > 0  # chars / 4
        main(args(server.url, tmp_path, captions_csv, out))
        assert server.received - before == Counter({CAPTIONS[6]: 1})
        assert len(pd.read_csv(out)) == 2 * 9 and not failure_report_path(out).exists()


def count_answers(store):
    """Answers in the store file so far (0 while the other process is still creating it)."""
    if not store.exists():
        return 0
    db = sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=5)
    try:
        return db.execute("SELECT COUNT(*) FROM answers").fetchone()[0]
    except sqlite3.OperationalError:  # the schema is not written yet
        return 0
    finally:
        db.close()


def test_killed_run_resumes_without_asking_twice(tmp_path):
    captions = [f"clip {i}: rain falls on a metal roof, then thunder" for i in range(12)]
    captions_csv, out = tmp_path / "captions.csv", tmp_path / "aug.csv"
    write_captions(captions_csv, captions)
    store = tmp_path / "aug.csv.answers.sqlite"
    with FakeLLM() as server:
        server.answer_limit = 5  # five answers, then every request hangs until the process is killed
        command = [sys.executable, "-m", "lacoat", *args(server.url, tmp_path, captions_csv, out, timeout=30)]
        log = tmp_path / "first_run.log"
        with open(log, "wb") as sink:
            proc = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 60
            stored = 0
            while stored < 5 and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.1)
                stored = count_answers(store)
            assert stored == 5, log.read_text()
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        assert proc.returncode == -signal.SIGKILL and not out.exists()  # killed mid-run
        first_run = set(server.answered)
        server.answer_limit = None
        server.release.set()
        asked_before = Counter(server.received)

        main(args(server.url, tmp_path, captions_csv, out))
        asked_again = server.received - asked_before
        assert not first_run & set(asked_again)  # nothing answered before the kill was asked again
        assert all(server.answered[c] == 1 for c in captions) and sum(server.answered.values()) == 12
    df = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert df["original_caption"].tolist() == [c for c in captions for _ in range(2)]
    assert df["caption"].tolist() == [p for c in captions for p in paraphrases(c, 2)]


def test_fatal_answers_and_unreachable_endpoints_end_in_one_message(tmp_path, capsys):
    captions_csv, out = tmp_path / "captions.csv", tmp_path / "aug.csv"
    write_captions(captions_csv, CAPTIONS)
    with FakeLLM({c: ["401"] for c in CAPTIONS}) as server:
        with pytest.raises(SystemExit) as exit_info:
            main(args(server.url, tmp_path, captions_csv, out))
        url = server.url
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert "lacoat augment: error: the API key was refused (HTTP 401)" in err and "Traceback" not in err
    # the server is gone: connection errors in a row stop the run instead of retrying forever
    with pytest.raises(SystemExit):
        main(args(url, tmp_path, captions_csv, out, "--max_attempts", "5"))
    err = capsys.readouterr().err
    assert "connection errors in a row" in err and "re-run to resume" in err


def test_rules_backend_on_real_clotho_captions(shared_data, tmp_path, capsys):
    source = shared_data / "clotho_v2.1" / "clotho_captions_evaluation.csv"
    out = tmp_path / "clotho_eval_rules.csv"
    main(
        [
            "augment",
            "--backend",
            "rules",
            "--input",
            str(source),
            "--output",
            str(out),
            "--n",
            "2",
            "--no_progress",
        ]
    )
    assert "5225 captions" in capsys.readouterr().out
    df = pd.read_csv(out, dtype=str, keep_default_na=False)
    wide = pd.read_csv(source, dtype=str, keep_default_na=False)
    originals = wide[[f"caption_{i}" for i in range(1, 6)]].to_numpy().reshape(-1)
    assert len(df) == 2 * len(originals) == 2 * 5225  # every caption got two paraphrases
    assert df["original_caption"].tolist() == [c for c in originals for _ in range(2)]
    assert (df["caption"].str.lower() != df["original_caption"].str.lower()).all()
    assert set(df["model"]) == {"rules"} and df["prompt_hash"].str.fullmatch(r"[0-9a-f]{12}").all()
    assert set(df["file_name"]) == set(wide["file_name"])
