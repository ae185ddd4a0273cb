"""Generate growth-stage captions with any OpenAI-compatible chat endpoint (Ollama, vLLM,
llama.cpp server, hosted APIs)::

    fungizsl captions generate --endpoint http://127.0.0.1:11434 --model llama3.1 \\
        --per-class 200 --out captions.jsonl --classes spore,hyphae,mycelium

The output is JSONL, one ``{"class", "text", "model", "prompt_id"}`` object per line, readable by
the ``jsonl`` caption source (:mod:`fungizsl.data.captions`). Guarantees:

* Resumable: an existing output file is read first and only the captions still missing per class
  are generated; a truncated last line (a kill in the middle of a write) is cut off.
* Nothing finished is lost: each caption is one line, written under a lock and flushed at once.
* No duplicates: a reply whose normalised text (case, whitespace) is already in the file for its
  class is not written; it counts as a failed attempt and is retried with another prompt and seed.
* Bounded: every caption gets at most ``max_retries + 1`` attempts (HTTP 5xx/429, connection
  errors, malformed or empty replies and duplicates all count); transient errors back off
  exponentially with jitter. When a caption runs out of attempts no new work is started and the
  run ends with :class:`GenerationError` (what was written stays; rerun to resume).

The HTTP side is :mod:`fungizsl.data.llm_client`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import random
import sys
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from tqdm import tqdm

from fungizsl.data.caption_files import FUNGALZSL_CLASSES, iter_jsonl
from fungizsl.data.caption_text import normalize_text
from fungizsl.data.llm_client import ChatClient, ChatError, TransientChatError

__all__ = [
    "CLASS_PROMPTS",
    "SYSTEM_PROMPT",
    "GenerationError",
    "GenerationReport",
    "prompts_for",
    "load_existing",
    "generate_captions",
    "register_cli",
    "run_generate",
]

SYSTEM_PROMPT = (
    "You are a mycologist writing captions for microscope images of fungi. Answer with a single "
    "description of one to three sentences: what the structures look like (shape, size, "
    "branching, density, arrangement). No preamble, no lists, no headings."
)

#: Varied phrasings per growth stage, each asking for one description of its microscopic look.
CLASS_PROMPTS: dict[str, tuple[str, ...]] = {
    "spore": (
        "Describe how fungal spores look under a microscope at the earliest stage of growth.",
        "Write one caption for a micrograph of fungal spores before any filaments have formed.",
        "What does a slide of freshly dispersed fungal spores look like? Describe the spores.",
        "Describe the shape, size and spacing of fungal spores seen through a light microscope.",
    ),
    "germinating_spore": (
        "Describe how germinating fungal spores look under a microscope.",
        "Write one caption for a micrograph of fungal spores that are sending out germ tubes.",
        "What does a fungal spore look like when it starts to germinate? Describe its appearance.",
        "Describe the outgrowths of sprouting fungal spores as seen through a light microscope.",
    ),
    "hyphae": (
        "Describe how young fungal hyphae look under a microscope.",
        "Write one caption for a micrograph of thin, branching fungal hyphae.",
        "What does a sparse network of fungal hyphae look like on a slide? Describe it.",
        "Describe the shape, width and branching of fungal hyphae seen through a light microscope.",
    ),
    "sporulating_hyphae": (
        "Describe how fungal hyphae look under a microscope when they start producing spores.",
        "Write one caption for a micrograph of hyphae carrying spore-bearing structures.",
        "What do sporulating fungal hyphae look like on a slide? Describe them.",
        "Describe the spore clusters at the tips of fungal hyphae seen through a light microscope.",
    ),
    "mycelium": (
        "Describe how a mature fungal mycelium looks under a microscope.",
        "Write one caption for a micrograph of a dense, interwoven fungal mycelium.",
        "What does a fully developed mycelial network look like on a slide? Describe it.",
        "Describe the density and branching of a mature fungal mycelium seen through a light microscope.",
    ),
}

_GENERIC_PROMPTS = (
    "Describe how the fungal growth stage '{}' looks under a microscope.",
    "Write one caption for a micrograph showing the fungal growth stage '{}'.",
    "What does the fungal growth stage '{}' look like on a slide? Describe it.",
)


def prompts_for(class_name: str) -> tuple[str, ...]:
    """The user prompts for a class (built-in ones, or generic ones naming the class)."""
    if class_name in CLASS_PROMPTS:
        return CLASS_PROMPTS[class_name]
    readable = class_name.replace("_", " ")
    return tuple(p.format(readable) for p in _GENERIC_PROMPTS)


class GenerationError(RuntimeError):
    """Generation stopped before every class had its captions."""


# --------------------------------------------------------------------------------------------
# Resumable generation


@dataclasses.dataclass
class GenerationReport:
    """What a run did: captions found and written per class, requests, failed attempts and
    their kinds (``errors``: "http 500", "connection", "malformed", "duplicate", ...)."""

    existing: dict[str, int]
    written: dict[str, int]
    requests: int = 0
    failed_attempts: int = 0
    duplicates: int = 0
    errors: Counter = dataclasses.field(default_factory=Counter)

    def total(self, class_name: str) -> int:
        return self.existing.get(class_name, 0) + self.written.get(class_name, 0)


def load_existing(path: str | os.PathLike, *, repair: bool = True) -> dict[str, set[str]]:
    """class -> set of normalised caption texts already in ``path`` (empty if it does not exist).

    A truncated last line (no newline, not JSON) is ignored and, with ``repair``, cut from the file
    so that appended lines start on a fresh line. Other bad lines raise ValueError.
    """
    path = pathlib.Path(path)
    seen: dict[str, set[str]] = {}
    if not path.exists():
        return seen
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for number, obj in iter_jsonl(path, allow_truncated_tail=True):
            cls, text = obj.get("class"), obj.get("text")
            if not isinstance(cls, str) or not isinstance(text, str) or not text.strip():
                raise ValueError(f"{path}: line {number}: expected non-blank 'class' and 'text'")
            seen.setdefault(cls, set()).add(normalize_text(text))
    if repair:
        _cut_partial_tail(path)
    return seen


def _cut_partial_tail(path: pathlib.Path) -> None:
    with open(path, "rb+") as f:
        data = f.read()
        if not data or data.endswith(b"\n"):
            return
        last = data.rfind(b"\n")
        tail = data[last + 1:]
        try:
            json.loads(tail.decode("utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            f.truncate(last + 1)  # drop the partial line
        else:
            f.write(b"\n")  # a complete object that only lacks its newline


def _backoff(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Exponential backoff with "equal jitter": half fixed, half random."""
    delay = min(cap, base * (2 ** attempt))
    return delay / 2 + rng.uniform(0, delay / 2)


def generate_captions(
    endpoint: str,
    model: str,
    per_class: int,
    out: str | os.PathLike,
    *,
    classes: Sequence[str] = FUNGALZSL_CLASSES,
    concurrency: int = 4,
    temperature: float = 0.8,
    max_retries: int = 5,
    api_key: str | None = None,
    timeout: float = 60.0,
    backoff_base: float = 1.0,
    backoff_max: float = 30.0,
    sleep: Callable[[float], None] = time.sleep,
    seed: int | None = None,
    progress: bool = True,
    client: ChatClient | None = None,
) -> GenerationReport:
    """Make ``out`` hold ``per_class`` unique captions for each of ``classes``; see module doc.

    ``sleep`` and ``seed`` (jitter and request seeds) are injectable for tests; ``client``
    replaces the HTTP client (``endpoint``/``api_key``/``timeout``/``temperature`` then unused).
    """
    if per_class < 0:
        raise ValueError(f"per_class must be >= 0, got {per_class}")
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    if max_retries < 0:
        raise ValueError(f"max_retries must be >= 0, got {max_retries}")
    classes = list(dict.fromkeys(c.strip() for c in classes if c.strip()))
    if not classes:
        raise ValueError("no classes to generate")
    if client is None:
        client = ChatClient(endpoint, model, api_key=api_key, timeout=timeout,
                            temperature=temperature)
    out = pathlib.Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    seen = load_existing(out)
    for c in classes:
        seen.setdefault(c, set())
    existing = {c: len(seen[c]) for c in classes}
    missing = {c: max(0, per_class - existing[c]) for c in classes}
    report = GenerationReport(existing=existing, written={c: 0 for c in classes})

    # Interleave classes so that progress (and a partial run) is spread over all of them.
    jobs: list[tuple[str, int]] = []
    for i in range(max(missing.values(), default=0)):
        jobs.extend((c, existing[c] + i) for c in classes if i < missing[c])
    if not jobs:
        return report

    rng = random.Random(seed)
    lock = threading.Lock()
    stop = threading.Event()
    failures: list[str] = []
    attempts = max_retries + 1

    bar = tqdm(total=len(jobs), desc="captions", unit="cap", disable=not progress, file=sys.stderr)

    def next_seed() -> int:
        with lock:
            return rng.randrange(2**31)

    def run_job(fh, class_name: str, index: int) -> None:
        prompts = prompts_for(class_name)
        last_error = "no attempt made"
        transient_in_row = 0
        for attempt in range(attempts):
            if stop.is_set():
                return
            prompt_no = (index + attempt) % len(prompts)
            messages = [
                {"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": prompts[prompt_no]},
            ]
            with lock:
                report.requests += 1
            try:
                text = client.complete(messages, seed=next_seed())
            except TransientChatError as e:
                last_error = str(e)
                with lock:
                    report.failed_attempts += 1
                    report.errors[e.kind] += 1
                if attempt + 1 < attempts:
                    delay = _backoff(transient_in_row, backoff_base, backoff_max, rng)
                    if e.retry_after is not None:
                        delay = max(delay, min(e.retry_after, backoff_max))
                    transient_in_row += 1
                    sleep(delay)
                continue
            except ChatError as e:
                with lock:
                    failures.append(f"{class_name}: {e}")
                stop.set()
                return
            transient_in_row = 0
            key = normalize_text(text)
            line = json.dumps({"class": class_name, "text": text, "model": model,
                               "prompt_id": f"{class_name}/{prompt_no}"}, ensure_ascii=False)
            with lock:
                if key in seen[class_name]:
                    report.duplicates += 1
                    report.failed_attempts += 1
                    report.errors["duplicate"] += 1
                    last_error = "the model repeated a caption already written"
                    continue
                seen[class_name].add(key)
                fh.write(line + "\n")
                fh.flush()
                report.written[class_name] += 1
                bar.update(1)
            return
        with lock:
            failures.append(f"{class_name}: gave up after {attempts} attempt(s); last error: {last_error}")
        stop.set()

    try:
        with open(out, "a", encoding="utf-8") as fh:
            with ThreadPoolExecutor(max_workers=min(concurrency, len(jobs))) as pool:
                futures = [pool.submit(run_job, fh, c, i) for c, i in jobs]
                try:
                    for f in futures:
                        f.result()
                except BaseException:  # e.g. Ctrl-C: do not wait for the queued jobs
                    stop.set()
                    for f in futures:
                        f.cancel()
                    raise
    finally:
        bar.close()

    if failures:
        done = ", ".join(f"{c} {report.total(c)}/{per_class}" for c in classes)
        raise GenerationError(
            f"caption generation stopped: {failures[0]}"
            + (f" (+{len(failures) - 1} more failure(s))" if len(failures) > 1 else "")
            + f". Have {done} in {out}; rerun the same command to resume."
        )
    return report


# --------------------------------------------------------------------------------------------
# Command line


def _positive_int(value: str) -> int:
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return n


def _non_negative_int(value: str) -> int:
    n = int(value)
    if n < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {value}")
    return n


def register_cli(subparsers) -> None:
    """Add ``captions generate`` to the top-level sub-command parsers."""
    captions = subparsers.add_parser("captions", help="caption corpora: generate with an LLM",
                                     description="Caption corpora tools.")
    sub = captions.add_subparsers(dest="captions_command", metavar="ACTION")
    captions.set_defaults(func=lambda args: (captions.print_help(), 2)[1])
    gen = sub.add_parser(
        "generate",
        help="write growth-stage captions with an OpenAI-compatible chat endpoint",
        description="Write growth-stage captions with an OpenAI-compatible chat endpoint (Ollama, "
                    "vLLM, llama.cpp server, hosted APIs) to a resumable, de-duplicated JSONL file "
                    "readable by the `jsonl` caption source.",
    )
    gen.add_argument("--endpoint", required=True,
                     help="server URL, e.g. http://127.0.0.1:11434 (Ollama), http://127.0.0.1:8000 "
                          "(vLLM); /v1/chat/completions is appended unless present")
    gen.add_argument("--model", required=True, help="model name as the server knows it")
    gen.add_argument("--per-class", type=_non_negative_int, required=True,
                     help="unique captions wanted per class (existing ones in --out count)")
    gen.add_argument("--out", required=True, help="output JSONL file (appended to; resumable)")
    gen.add_argument("--classes", default=",".join(FUNGALZSL_CLASSES),
                     help="comma-separated classes (default: %(default)s; also germinating_spore, "
                          "sporulating_hyphae, or any name)")
    gen.add_argument("--concurrency", type=_positive_int, default=4, help="parallel requests")
    gen.add_argument("--temperature", type=float, default=0.8, help="sampling temperature")
    gen.add_argument("--max-retries", type=_non_negative_int, default=5,
                     help="retries per caption (errors, malformed replies and duplicates count)")
    gen.add_argument("--api-key-env", default=None,
                     help="environment variable holding the API key (sent as a Bearer token)")
    gen.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    gen.add_argument("--seed", type=int, default=None, help="seed for request seeds and jitter")
    gen.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    gen.set_defaults(func=run_generate)


def run_generate(args: argparse.Namespace) -> int:
    api_key = None
    if args.api_key_env:
        api_key = os.environ.get(args.api_key_env)
        if not api_key:
            print(f"error: environment variable {args.api_key_env} is not set", file=sys.stderr)
            return 2
    classes = [c.strip() for c in args.classes.split(",") if c.strip()]
    try:
        report = generate_captions(
            args.endpoint, args.model, args.per_class, args.out, classes=classes,
            concurrency=args.concurrency, temperature=args.temperature,
            max_retries=args.max_retries, api_key=api_key, timeout=args.timeout,
            seed=args.seed, progress=not args.no_progress,
        )
    except (GenerationError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    summary = ", ".join(
        f"{c}: {report.total(c)} ({report.written[c]} new)" for c in report.written)
    print(f"{args.out}: {summary}; {report.requests} request(s), "
          f"{report.failed_attempts} failed attempt(s), {report.duplicates} duplicate(s)")
    return 0
