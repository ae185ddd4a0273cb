"""Throughput of the synthetic growth-stage renderer on one CPU core.

    python benchmarks/bench_renderer.py [--size 224] [--images 200] [--stages spore,hyphae,mycelium]

Prints images/s per stage and overall (total images / total time, so the three stages count
equally) for both presets.  The process is pinned to a single core (Linux) and numeric libraries
are limited to one thread, so the numbers are per core; data loading can multiply them by workers.
"""

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import time  # noqa: E402

from fungizsl.data.synthetic import PRESETS, STAGES, RenderConfig, render_image  # noqa: E402


def pin_to_one_core() -> str:
    if not hasattr(os, "sched_setaffinity"):
        return "not pinned (no sched_setaffinity on this OS)"
    core = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {core})
    return f"pinned to core {core}"


def time_stage(stage: str, config: RenderConfig, images: int, seed: int) -> float:
    """Seconds to render `images` distinct images of `stage`."""
    render_image(stage, 10**6, seed, config)  # warm caches (coordinate grids, fonts, imports)
    start = time.perf_counter()
    for index in range(images):
        render_image(stage, index, seed, config)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--images", type=int, default=200, help="images per stage and preset")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stages", default=",".join(STAGES))
    args = parser.parse_args()
    stages = tuple(args.stages.split(","))
    print(f"renderer throughput, {args.size} px, {args.images} images per stage, {pin_to_one_core()}")
    for preset in PRESETS:
        config = RenderConfig(image_size=args.size, preset=preset, stages=stages)
        total = 0.0
        for stage in stages:
            seconds = time_stage(stage, config, args.images, args.seed)
            total += seconds
            rate, ms = args.images / seconds, 1e3 * seconds / args.images
            print(f"  {preset:<9} {stage:<19} {rate:8.1f} images/s  ({ms:5.2f} ms/image)")
        print(f"  {preset:<9} {'overall':<19} {len(stages) * args.images / total:8.1f} images/s")


if __name__ == "__main__":
    main()
