"""Throughput of the Grain input pipeline (fungizsl.data.pipeline) in images per second.

    python benchmarks/bench_pipeline.py [--size 224] [--batch 32] [--batches 16] [--workers 0,2]

Two sources, each with every worker count:

* ``encoded``: a few hundred rendered images, encoded once (PNG and JPEG alternately) and held in
  memory, so the run measures decode + augmentation + caption lookup + batching;
* ``rendered``: :class:`~fungizsl.data.pipeline.RenderedSource`, which renders every image on access.

Throughput counts the batches after the first; the first batch's latency (worker start-up included)
is reported separately. Each configuration runs ``--repeats`` times and the table shows the median
and the range of images/s, since a small shared machine is noisy. Numeric libraries are held to one
thread so that workers, not BLAS threads, supply the parallelism.
"""

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402


def encoded_source(count: int, size: int, seed: int):
    """``count`` rendered images as PNG/JPEG bytes in memory (rendered once, up front)."""
    from fungizsl.data import pipeline as pl

    rendered = pl.RenderedSource(n_per_stage=-(-count // 3), seed=seed,
                                 render_config=_render_config(size))
    records = []
    for i in range(count):
        record = rendered[i]
        records.append({"image": pl.encode_image(record["image"], "png" if i % 2 else "jpeg"),
                        "label": record["label"]})
    return pl.InMemorySource(records, class_names=rendered.class_names)


def _render_config(size: int):
    from fungizsl.data.synthetic import RenderConfig

    return RenderConfig(image_size=size)


def time_pipeline(source, args, workers: int, tokenizer_dir: str, captions) -> tuple[float, float]:
    """(images/s after the first batch, seconds to the first batch)."""
    from fungizsl.data import pipeline as pl

    start = time.perf_counter()
    iterator = pl.make_train_iterator(
        source, global_batch_size=args.batch, seed=0, image_size=args.size, augment=args.augment,
        captions_by_class=captions, tokenizer=tokenizer_dir, worker_count=workers,
        read_threads=args.read_threads, prefetch_batches=args.prefetch, process_index=0, process_count=1)
    try:
        next(iterator)
        first = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(args.batches):
            batch = next(iterator)
            assert batch["image"].shape == (args.batch, args.size, args.size, 3)
        elapsed = time.perf_counter() - start
    finally:
        iterator.close()
    return args.batches * args.batch / elapsed, first


def main() -> None:
    from fungizsl import tokenizers as tk
    from fungizsl.data import pipeline as pl
    from fungizsl.data.captions import get_caption_source

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--batches", type=int, default=16, help="timed batches per run (after the first)")
    parser.add_argument("--records", type=int, default=256, help="images of the encoded source")
    parser.add_argument("--workers", default="0,2", help="comma list of worker counts")
    parser.add_argument("--augment", default="microscopy", help="augment preset: natural, microscopy, none")
    parser.add_argument("--read-threads", type=int, default=2, help="threads per process")
    parser.add_argument("--prefetch", type=int, default=2, help="batches prefetched per process")
    parser.add_argument("--sources", default="encoded,rendered")
    parser.add_argument("--repeats", type=int, default=3, help="runs per configuration")
    args = parser.parse_args()
    workers = [int(w) for w in args.workers.split(",")]
    sources = args.sources.split(",")

    captions = get_caption_source("templates").by_class()
    tokenizer_dir = tempfile.mkdtemp(prefix="bench_pipeline_bpe_")
    tk.train_bpe_tokenizer([t for texts in captions.values() for t in texts], 400, tokenizer_dir)

    built = {}
    if "encoded" in sources:
        start = time.perf_counter()
        built["encoded"] = encoded_source(args.records, args.size, seed=1)
        kib = sum(len(built["encoded"][i]["image"]) for i in range(args.records)) / args.records / 1024
        print(f"rendered and encoded {args.records} images in {time.perf_counter() - start:.1f} s "
              f"(mean {kib:.0f} KiB each, PNG and JPEG alternately)")
    if "rendered" in sources:
        built["rendered"] = pl.RenderedSource(n_per_stage=10_000, seed=2, render_config=_render_config(args.size))

    print(f"\npipeline throughput: {args.size} px, batch {args.batch}, augment={args.augment}, captions on, "
          f"{args.read_threads} read threads per process, {os.cpu_count()} CPUs, {args.batches} timed batches")
    print(f"{'source':<10} {'workers':>7} {'images/s (median)':>18} {'min-max':>13} {'first batch s':>14}")
    for name, source in built.items():
        for count in workers:
            runs = [time_pipeline(source, args, count, tokenizer_dir, captions) for _ in range(args.repeats)]
            rates = sorted(rate for rate, _ in runs)
            first = float(np.median([f for _, f in runs]))
            print(f"{name:<10} {count:>7} {np.median(rates):>18.1f} {f'{rates[0]:.0f}-{rates[-1]:.0f}':>13} "
                  f"{first:>14.2f}", flush=True)


if __name__ == "__main__":
    main()
