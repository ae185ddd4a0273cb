"""LLM caption generation against a stub OpenAI-compatible server on 127.0.0.1."""

import itertools
import json
import socket
import threading
import time
from collections import Counter, defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from fungizsl import cli
from fungizsl.data import caption_files as CF
from fungizsl.data import caption_text as CT
from fungizsl.data import captions as C
from fungizsl.data import llm_captions as L
from fungizsl.data import llm_client as LC

CLASSES = ["spore", "hyphae", "mycelium"]
ADJECTIVES = ["round", "thin", "dense", "pale", "branched", "smooth", "tangled", "sparse", "oval", "dark"]


class Stub:
    """Scripted chat server. ``script`` gives the behaviour of the first requests in arrival order
    ("ok", "500", "429", "badjson", "nocontent", "empty", "dup"); later ones follow ``default``."""

    serial = itertools.count(1)  # texts stay unique across stubs (resume tests use several)

    def __init__(self, script=(), default="ok", dup_every=0, status=None):
        self.script = list(script)
        self.default = default
        self.dup_every = dup_every
        self.status = status
        self.lock = threading.Lock()
        self.requests = []  # (class, behaviour, body, headers)
        self.ok = Counter()
        self.given = defaultdict(list)

    @staticmethod
    def class_of(body):
        user = [m["content"] for m in body["messages"] if m["role"] == "user"][0]
        return next(c for c in L.CLASS_PROMPTS if user in L.prompts_for(c))

    def respond(self, path, body, headers):
        with self.lock:
            cls = self.class_of(body)
            behaviour = self.script.pop(0) if self.script else self.default
            if behaviour == "ok" and self.dup_every and self.given[cls] and len(self.requests) % self.dup_every == 0:
                behaviour = "dup"
            self.requests.append((cls, behaviour, body, dict(headers)))
            if self.status is not None:
                return self.status, b'{"error": "nope"}', {}
            if behaviour == "500":
                return 500, b"internal error", {}
            if behaviour == "429":
                return 429, b"slow down", {"Retry-After": "0"}
            if behaviour == "badjson":
                return 200, b"{not json", {}
            if behaviour == "nocontent":
                return 200, json.dumps({"choices": [{"message": {"role": "assistant"}}]}).encode(), {}
            if behaviour == "empty":
                content = "   "
            elif behaviour == "dup" and self.given[cls]:
                content = "  " + self.given[cls][0].upper().replace(" ", "   ") + "\n"
            else:
                n = next(Stub.serial)
                content = (f"The {cls} sample {n} shows {ADJECTIVES[n % len(ADJECTIVES)]} structures "
                           f"spread over the field.")
                self.given[cls].append(content)
                self.ok[cls] += 1
            reply = {"id": "x", "object": "chat.completion",
                     "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                                  "finish_reason": "stop"}]}
            return 200, json.dumps(reply).encode(), {}

    def count(self, behaviour=None):
        return sum(1 for r in self.requests if behaviour is None or r[1] == behaviour)


@pytest.fixture
def serve():
    servers = []

    def start(stub):
        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length))
                if self.path != "/v1/chat/completions":
                    status, data, extra = 404, b"not found", {}
                else:
                    status, data, extra = stub.respond(self.path, body, self.headers)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in extra.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        servers.append((server, thread))
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server, thread in servers:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _no_sleep(delays):
    return lambda s: delays.append(s)


def test_chat_completions_url():
    assert LC.chat_completions_url("http://127.0.0.1:11434") == "http://127.0.0.1:11434/v1/chat/completions"
    assert LC.chat_completions_url("http://h:8000/") == "http://h:8000/v1/chat/completions"
    assert LC.chat_completions_url("http://h:8000/v1") == "http://h:8000/v1/chat/completions"
    assert LC.chat_completions_url("https://h/api/v1/chat/completions/") == "https://h/api/v1/chat/completions"
    with pytest.raises(ValueError, match="http"):
        LC.chat_completions_url("127.0.0.1:8000")


def test_clean_reply_and_prompts():
    assert LC.clean_reply('<think>hmm\nok</think>\n "Round  spores\nlie apart." ') == "Round spores lie apart."
    assert LC.clean_reply("Caption: Thin threads.") == "Thin threads."
    for stage in C.GROWTH_STAGES:
        prompts = L.prompts_for(stage)
        assert len(prompts) >= 3 and len(set(prompts)) == len(prompts)
    assert all("conidia" in p for p in L.prompts_for("conidia"))


def test_scripted_failures_are_retried(serve, tmp_path):
    stub = Stub(script=["ok", "ok", "ok", "dup", "500", "badjson", "nocontent", "empty", "429"])
    url = serve(stub)
    out = tmp_path / "caps.jsonl"
    delays = []
    report = L.generate_captions(url, "stub-model", 3, out, classes=CLASSES, concurrency=1,
                                 max_retries=8, sleep=_no_sleep(delays), seed=0, progress=False)
    rows = _lines(out)
    assert len(rows) == 9
    by = defaultdict(list)
    for r in rows:
        assert set(r) == {"class", "text", "model", "prompt_id"}
        assert r["model"] == "stub-model" and r["prompt_id"].startswith(r["class"] + "/")
        by[r["class"]].append(CT.normalize_text(r["text"]))
    assert {c: len(set(v)) for c, v in by.items()} == {c: 3 for c in CLASSES}
    # Every scripted failure cost one request; successes are exactly the 9 captions.
    assert stub.count() == 9 + 6
    assert sum(stub.ok.values()) == 9
    assert report.requests == 15 and report.failed_attempts == 6 and report.duplicates == 1
    assert report.errors == Counter({"duplicate": 1, "http 500": 1, "malformed": 3, "http 429": 1})
    assert report.written == {c: 3 for c in CLASSES}
    # Backoff only for transient errors, exponential with jitter (base 1 s: [0.5,1], [1,2], ...).
    assert len(delays) == 5
    for k, d in enumerate(delays):
        assert 2 ** k / 2 <= d <= 2 ** k
    # The duplicate was retried with another prompt and another seed.
    dup_at = next(i for i, r in enumerate(stub.requests) if r[1] == "dup")
    before, after = stub.requests[dup_at][2], stub.requests[dup_at + 1][2]
    assert before["messages"][1]["content"] != after["messages"][1]["content"]
    assert before["seed"] != after["seed"]
    assert before["model"] == "stub-model" and before["temperature"] == 0.8
    # The output is a valid `jsonl` caption source.
    src = C.get_caption_source("jsonl", path=out, classes=CLASSES)
    assert {c: len(v) for c, v in src.by_class().items()} == {c: 3 for c in CLASSES}


def test_concurrent_generation_exact_unique_counts(serve, tmp_path):
    stub = Stub(script=["500", "badjson", "ok", "nocontent"], dup_every=3)
    url = serve(stub)
    out = tmp_path / "deep" / "caps.jsonl"
    classes = CLASSES + ["germinating_spore", "sporulating_hyphae"]
    report = L.generate_captions(url + "/v1/chat/completions", "m", 8, out, classes=classes,
                                 concurrency=4, max_retries=12, sleep=lambda s: None, progress=False)
    rows = _lines(out)
    counts = Counter(r["class"] for r in rows)
    assert counts == {c: 8 for c in classes}
    keys = [(r["class"], CT.normalize_text(r["text"])) for r in rows]
    assert len(keys) == len(set(keys))
    assert stub.count("dup") >= 1 and report.duplicates == stub.count("dup")
    assert report.requests == stub.count()


def test_resume_generates_only_missing(serve, tmp_path):
    out = tmp_path / "caps.jsonl"
    first = Stub()
    L.generate_captions(serve(first), "m", 2, out, classes=CLASSES, concurrency=2,
                        sleep=lambda s: None, progress=False)
    assert first.ok == {c: 2 for c in CLASSES}

    second = Stub()
    report = L.generate_captions(serve(second), "m", 5, out, classes=CLASSES, concurrency=3,
                                 sleep=lambda s: None, progress=False)
    assert report.existing == {c: 2 for c in CLASSES}
    assert second.ok == {c: 3 for c in CLASSES} and second.count() == 9
    assert Counter(r["class"] for r in _lines(out)) == {c: 5 for c in CLASSES}

    # A kill mid-write leaves a truncated last line: it is ignored, cut, and the run goes on.
    with open(out, "a") as f:
        f.write('{"class": "spore", "text": "The spore sam')
    third = Stub()
    L.generate_captions(serve(third), "m", 6, out, classes=CLASSES, concurrency=2,
                        sleep=lambda s: None, progress=False)
    assert third.ok == {c: 1 for c in CLASSES}
    caps = CF.read_jsonl_captions(out, allow_truncated_tail=False)  # strict: the file is whole again
    assert Counter(c.class_name for c in caps) == {c: 6 for c in CLASSES}
    assert len({(c.class_name, CT.normalize_text(c.text)) for c in caps}) == 18

    # Nothing missing: no request at all. A smaller target never deletes anything.
    fourth = Stub()
    report = L.generate_captions(serve(fourth), "m", 4, out, classes=CLASSES, sleep=lambda s: None,
                                 progress=False)
    assert fourth.count() == 0 and report.written == {c: 0 for c in CLASSES}
    assert len(_lines(out)) == 18


def test_resume_complete_last_line_without_newline(serve, tmp_path):
    out = tmp_path / "caps.jsonl"
    out.write_text('{"class": "spore", "text": "Old caption."}')  # whole object, no newline
    stub = Stub()
    L.generate_captions(serve(stub), "m", 2, out, classes=["spore"], sleep=lambda s: None, progress=False)
    assert stub.ok == {"spore": 1}
    assert [r["text"] for r in _lines(out)][0] == "Old caption." and len(_lines(out)) == 2


def test_each_caption_is_on_disk_before_the_next_request(tmp_path):
    out = tmp_path / "caps.jsonl"
    returned = []

    class FakeClient:
        def complete(self, messages, seed=None):
            on_disk = out.read_text().count("\n") if out.exists() else 0
            assert on_disk == len(returned)
            returned.append(f"caption {len(returned)}")
            return returned[-1]

    L.generate_captions("http://unused", "m", 3, out, classes=CLASSES, concurrency=1,
                        client=FakeClient(), progress=False)
    assert len(_lines(out)) == 9


def test_always_failing_endpoint_errors_without_hanging(serve, tmp_path):
    stub = Stub(default="500")
    url = serve(stub)
    out = tmp_path / "caps.jsonl"
    delays = []
    start = time.monotonic()
    with pytest.raises(L.GenerationError, match=r"gave up after 4 attempt\(s\); last error: HTTP 500") as info:
        L.generate_captions(url, "m", 50, out, classes=CLASSES, concurrency=2, max_retries=3,
                            sleep=_no_sleep(delays), progress=False)
    assert time.monotonic() - start < 10
    assert "rerun the same command to resume" in str(info.value)
    # Work stops once a caption runs out of attempts: at most one round per worker.
    assert 4 <= stub.count() <= 2 * 4
    assert len(delays) <= 2 * 3
    assert not out.exists() or _lines(out) == []


def test_unreachable_endpoint_errors(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(L.GenerationError, match="cannot reach"):
        L.generate_captions(f"http://127.0.0.1:{port}", "m", 2, tmp_path / "c.jsonl", classes=["spore"],
                            max_retries=2, sleep=lambda s: None, timeout=2, progress=False)


def test_client_error_is_not_retried(serve, tmp_path):
    stub = Stub(status=401)
    url = serve(stub)
    with pytest.raises(L.GenerationError, match="HTTP 401"):
        L.generate_captions(url, "m", 3, tmp_path / "c.jsonl", classes=["spore"], concurrency=1,
                            max_retries=5, sleep=lambda s: None, progress=False)
    assert stub.count() == 1


def test_cli_generate(serve, tmp_path, monkeypatch, capsys):
    stub = Stub()
    url = serve(stub)
    out = tmp_path / "cli.jsonl"
    monkeypatch.setenv("FUNGIZSL_TEST_KEY", "sekret")
    argv = ["captions", "generate", "--endpoint", url + "/v1", "--model", "tiny", "--per-class", "2",
            "--out", str(out), "--classes", "spore,mycelium", "--concurrency", "2", "--temperature", "0.3",
            "--max-retries", "1", "--api-key-env", "FUNGIZSL_TEST_KEY", "--timeout", "5", "--no-progress"]
    assert cli.main(argv) == 0
    assert "spore: 2 (2 new)" in capsys.readouterr().out
    assert stub.ok == {"spore": 2, "mycelium": 2}
    for _, _, body, headers in stub.requests:
        assert headers["Authorization"] == "Bearer sekret"
        assert body["temperature"] == 0.3 and body["model"] == "tiny"
    assert set(C.get_caption_source("jsonl", path=out).by_class()) == {"spore", "mycelium"}

    monkeypatch.delenv("FUNGIZSL_TEST_KEY")
    assert cli.main(argv) == 2
    assert "FUNGIZSL_TEST_KEY is not set" in capsys.readouterr().err

    failing = serve(Stub(default="500"))
    argv = ["captions", "generate", "--endpoint", failing, "--model", "m", "--per-class", "1",
            "--out", str(tmp_path / "f.jsonl"), "--max-retries", "0", "--no-progress"]
    assert cli.main(argv) == 1
    assert "gave up after 1 attempt(s)" in capsys.readouterr().err


def test_cli_parser_shape():
    parser = cli.build_parser(only="captions")
    args = parser.parse_args(["captions", "generate", "--endpoint", "http://x", "--model", "m",
                              "--per-class", "4", "--out", "o.jsonl"])
    assert args.func is L.run_generate
    assert (args.concurrency, args.temperature, args.max_retries, args.timeout) == (4, 0.8, 5, 60.0)
    assert args.classes == "spore,hyphae,mycelium" and args.api_key_env is None
    with pytest.raises(SystemExit):
        parser.parse_args(["captions", "generate", "--endpoint", "http://x", "--model", "m",
                           "--per-class", "4", "--out", "o", "--concurrency", "0"])
