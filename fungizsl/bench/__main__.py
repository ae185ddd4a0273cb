"""`python -m fungizsl.bench --config=configs/fungalzsl.py:arch=tiny --reference=torch --out=bench.json`

Times the compiled FungalZSL train step (compile excluded, block_until_ready, interleaved rounds
with every contender). Around every round it records what other processes took from our cores
(/proc/stat) and the load average, marks rounds where others used more than a quarter core
"contended" and leaves them out of every ratio (no clean round: no ratio). It sets both sides'
thread pools (--threads) and reports them, and reports fastest and median step, CPU-seconds per
step, images/s (and per core), model FLOP/s and MFU, compiled memory, the input pipeline's own rate, an op-level profile, and
with --reference=torch the same step in transformers' PyTorch CLIPModel (same weights, batch,
loss, AdamW, thread count; eager and torch.compile; fp32 and bf16), plus image-embedding
throughput of both. --sweep adds step time/memory against batch and resolution, FSDP memory per
device for ViT-L/14@336 on 1..8 simulated devices and the loss's communication volume.

MFU counts model FLOPs only: 2*M*N*K of every matmul/convolution in the jaxpr of the loss and its
gradient (forward + backward; no optimizer, no elementwise work). The peak is, on CPU, the rate of
the --peak_matmul^3 fp32 matmul measured in the same interleaved rounds; on GPU/TPU the datasheet dense
bf16 peak of the device.
"""

import datetime
import json
import os

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from fungizsl import allocator
from fungizsl.bench import measure, runner, scaling

_CONFIG = config_flags.DEFINE_config_file("config", None, "experiment config, e.g. configs/fungalzsl.py:arch=tiny")
flags.DEFINE_enum("reference", "none", ["none", "torch"], "also run the PyTorch reference: transformers' "
                  "CLIPModel for a ViT tower, bench/torch_convnet.py for cnn_tiny")
flags.DEFINE_string("out", None, "write the results as JSON here")
flags.DEFINE_integer("batch", None, "global batch (default: the config's batch_size)")
flags.DEFINE_integer("steps", 5, "timed rounds (each round runs every contender once)")
flags.DEFINE_string("dtype", "auto", "comma list of float32,bfloat16; auto: both on CPU, bfloat16 on accelerators")
flags.DEFINE_string("torch_modes", "auto", "comma list of eager,compile; auto: compile too for models under 20M params")
flags.DEFINE_bool("profile", True, "trace the JAX step and bucket op times by model part")
flags.DEFINE_bool("pipeline", True, "measure the input pipeline alone")
flags.DEFINE_bool("embed", True, "image-embedding (inference) throughput")
flags.DEFINE_integer("threads", 0, "threads of every pool on both sides (XLA via NPROC, torch intra-op and "
                     "inter-op); 0: the cores this process may run on")
flags.DEFINE_integer("peak_matmul", 4096, "side of the fp32 matmul that measures the CPU peak (0: no peak, no MFU)")
flags.DEFINE_bool("sweep", False, "scaling: batch x resolution sweep, FSDP memory per device, loss communication")
flags.DEFINE_string("sweep_batches", "8,32,64", "batches of the sweep")
flags.DEFINE_string("sweep_resolutions", "96,224,336", "resolutions of the sweep")
flags.DEFINE_string("fsdp_arch", "l14_336", "architecture of the FSDP memory table")
flags.DEFINE_string("fsdp_devices", "1,2,4,8", "simulated device counts of the FSDP memory table")
flags.DEFINE_string("loss_comm_batches", "64,256,1024,4096", "global batches of the loss communication table")
flags.mark_flags_as_required(["config"])
FLAGS = flags.FLAGS


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def main(argv) -> None:
    del argv
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    threads = FLAGS.threads or len(measure.available_cores())
    # XLA:CPU sizes its thread pools from NPROC when its backend starts, which is below (the first
    # jax.devices()): nothing before this line may touch a device.
    os.environ["NPROC"] = str(threads)
    config = _CONFIG.value
    device = runner.device_info()
    accelerator = device["platform"] != "cpu"
    dtypes = (["bfloat16"] if accelerator else ["float32", "bfloat16"]) if FLAGS.dtype == "auto" \
        else FLAGS.dtype.split(",")
    result = {
        "date": datetime.date.today().isoformat(), "device": device,
        "config": f"{config.model.arch}", "batch": FLAGS.batch or int(config.batch_size),
        "image_size": int(config.data.image_size), "jax_version": jax.__version__,
        "xla_flags": os.environ.get("XLA_FLAGS", ""), "allocator": allocator.current(),
    }
    result.update(runner.run_all(config, batch=result["batch"], dtypes=dtypes, rounds=FLAGS.steps,
                                 reference=FLAGS.reference, torch_modes=FLAGS.torch_modes,
                                 profile=FLAGS.profile, pipeline=FLAGS.pipeline, embed=FLAGS.embed,
                                 threads=threads, peak_matmul=FLAGS.peak_matmul))
    if FLAGS.sweep:
        result["sweep"] = scaling.sweep(config, _ints(FLAGS.sweep_batches), _ints(FLAGS.sweep_resolutions),
                                        dtypes[0], rounds=max(2, FLAGS.steps // 2))
        result["fsdp_memory"] = scaling.fsdp_memory_table(FLAGS.fsdp_arch, _ints(FLAGS.fsdp_devices))
        result["loss_communication"] = scaling.run_child("loss_comm", 8, {"batches": _ints(FLAGS.loss_comm_batches)})
    print(runner.format_report(result))
    if FLAGS.out:
        os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
        with open(FLAGS.out, "w") as f:
            json.dump(result, f, indent=1)
        print(f"wrote {FLAGS.out}")


if __name__ == "__main__":
    allocator.reexec_under_tcmalloc()
    app.run(main)
