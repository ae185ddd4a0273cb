"""The input pipeline alone: images per second of the config's Grain train iterator.

Built as the trainer builds it (`FungalZSLData.train_iterator`: same image size, augmentation,
caption sampling, tokenisation, worker count), over a small slice of the train split (the rate
does not depend on the split's size once images are in memory). Captions fall back to the
`templates` source when the config's caption files are not on this machine.
"""

import os
import tempfile
import time

from fungizsl import tokenizers
from fungizsl.fungalzsl import inputs


def pipeline_images_per_sec(config, batch_size: int, batches: int = 8, records: int = 384) -> dict:
    config = config.copy_and_resolve_references()
    config.batch_size = batch_size
    config.data.per_class.train = max(1, records // len(config.data.stages))
    note = ""
    try:
        data = inputs.FungalZSLData(config)
    except (FileNotFoundError, ValueError) as error:
        note = f"captions={config.data.captions!r} unavailable ({type(error).__name__}); used templates"
        config.data.captions = "templates"
        data = inputs.FungalZSLData(config)
    folder = tempfile.mkdtemp(prefix="fungizsl_bench_bpe_")
    tokenizer = tokenizers.train_bpe_tokenizer(data.tokenizer_corpus(), int(config.model.vocab_size), folder,
                                               context_length=int(config.model.text_context))
    start = time.perf_counter()
    data.source("train")  # renders (and caches, with data.cache_in_memory) the slice
    prepare_s = time.perf_counter() - start
    iterator = data.train_iterator(tokenizer)
    try:
        start = time.perf_counter()
        next(iterator)
        first_s = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(batches):
            next(iterator)
        elapsed = time.perf_counter() - start
    finally:
        close = getattr(iterator, "close", None)
        if close:
            close()
    return {"images_per_sec": batches * batch_size / elapsed, "first_batch_s": first_s,
            "prepare_s": prepare_s, "batches": batches, "worker_count": int(config.data.worker_count),
            "cache_in_memory": bool(config.data.get("cache_in_memory", False)),
            "source": config.data.kind, "note": note, "cpu_count": os.cpu_count()}
