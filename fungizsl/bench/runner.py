"""One benchmark run: builds every contender, times them interleaved, and assembles the record
that `python -m fungizsl.bench` prints and writes as JSON (see `__main__` for what is counted)."""

import os
import time

import jax
import numpy as np

from fungizsl.bench import clip_step, input_rate, measure
from fungizsl.bench import profile as op_profile

PRIMARY = {"cpu": "float32"}  # the headline dtype per platform; accelerators: bfloat16


def device_info() -> dict:
    info = measure.device_description()
    if info["platform"] == "cpu":
        info["threads"] = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        info["cores_for_per_core"] = info["threads"]
    else:
        info["cores_for_per_core"] = info["device_count"]
    return info


def _torch_contenders(bench, batch_np, modes, dtype, threads):
    from fungizsl.bench import torch_clip  # PyTorch: only for --reference=torch

    config = bench.config
    tbatch = torch_clip.to_torch_batch(batch_np)
    out, errors, loss0 = {}, {}, None
    for mode in modes:
        hf = torch_clip.build(bench.model, bench.params, threads)
        stepper = torch_clip.TorchClipStep(hf, lr=config.lr, weight_decay=config.wd, b2=config.optim.b2,
                                           grad_clip_norm=config.optim.grad_clip_norm,
                                           class_aware=config.loss.class_aware,
                                           combine=config.loss.get("combine", "mean"), dtype=dtype, mode=mode)
        if loss0 is None:
            loss0 = stepper.loss(tbatch)
        try:
            start = time.perf_counter()
            stepper(tbatch)  # torch.compile compiles here
            out[mode] = (lambda s=stepper: s(tbatch), time.perf_counter() - start)
        except Exception as error:  # noqa: BLE001 - torch.compile failures are reported, not fatal
            errors[mode] = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
    return out, errors, loss0, tbatch


def run_dtype(config, batch: int, dtype: str, rounds: int, reference: str, torch_modes, peak_fn,
              threads: int, want_profile: bool, embed: bool) -> dict:
    bench = clip_step.build(config, batch, dtype)
    batch_np = clip_step.synthetic_batch(bench)
    step, compiled, compile_s, placed = clip_step.compiled_step(bench, batch_np)
    loss_grad = clip_step.loss_and_grad_fn(bench)
    params = jax.device_put(bench.params)
    initial_loss = float(loss_grad(params, placed)[0])
    model_flops = measure.model_flops(loss_grad, params, placed)
    record = {"dtype": dtype, "batch": batch, "params": clip_step.param_count(bench.params),
              "compile_s": compile_s, "initial_loss_jax": initial_loss, "model_flops_per_step": model_flops,
              "xla_step_flops": measure.cost_analysis_flops(compiled), "memory": measure.memory(compiled)}
    contenders = {"jax": step}
    peak_samples = []
    if peak_fn is not None:
        contenders["matmul_peak"] = lambda: peak_samples.append(peak_fn[0]())
    if reference == "torch":
        modes = torch_modes(record["params"])
        torch_steps, errors, loss0, tbatch = _torch_contenders(bench, batch_np, modes, dtype, threads)
        record["initial_loss_torch"] = loss0
        record["torch_errors"] = errors
        record["torch_first_call_s"] = {m: s for m, (_, s) in torch_steps.items()}
        contenders.update({f"torch_{m}": fn for m, (fn, _) in torch_steps.items()})
    times = measure.interleaved(contenders, rounds)
    jax_t = times["jax"]
    record["timing"] = times
    record["step_ms"] = 1e3 * jax_t["median_s"]
    record["jax_images_per_sec"] = batch / jax_t["median_s"]
    if peak_fn is not None:
        # Best of all samples on both sides: the least disturbed moments of a shared machine.
        record["peak_flops"] = peak_fn[1] / min(peak_samples)
        record["peak_flops_median"] = peak_fn[1] / float(np.median(peak_samples))
        record["peak_source"] = ("measured: fastest 4096^3 fp32 matmul in XLA over the same interleaved "
                                 "rounds; MFU uses the fastest step")
    for name in contenders:
        if name.startswith("torch_"):
            record[f"{name}_images_per_sec"] = batch / times[name]["median_s"]
            record[f"{name}_speed_ratio"] = measure.paired_ratio(times[name], jax_t)
    if embed:
        record["embed"] = _embed(bench, batch_np, rounds, reference, dtype, threads)
    if want_profile:
        record["profile"] = op_profile.profile_step(compiled, step, steps=2)
    return record


def _embed(bench, batch_np, rounds, reference, dtype, threads) -> dict:
    fn = clip_step.embed_images_fn(bench)
    images = clip_step.place_batch(bench, {"image": batch_np["image"]})["image"]
    params = jax.device_put(bench.params)
    compiled = fn.lower(params, images).compile()
    contenders = {"jax": lambda: measure.block(compiled(params, images))}
    if reference == "torch":
        from fungizsl.bench import torch_clip  # PyTorch: only for --reference=torch

        hf = torch_clip.build(bench.model, bench.params, threads).eval()
        embed = torch_clip.make_embed_images(hf, dtype)
        pixels = torch_clip.to_torch_batch(batch_np)["pixel_values"]
        contenders["torch"] = lambda: embed(pixels)
    times = measure.interleaved(contenders, rounds)
    out = {f"{k}_images_per_sec": len(batch_np["image"]) / v["median_s"] for k, v in times.items()}
    if "torch" in times:
        out["speed_ratio"] = measure.paired_ratio(times["torch"], times["jax"])
    return out


def run_all(config, *, batch, dtypes, rounds, reference, torch_modes, profile, pipeline, embed) -> dict:
    device = device_info()
    cpu = device["platform"] == "cpu"
    threads = device.get("threads", 1)
    peak_fn = measure.matmul_contender() if cpu else None
    datasheet = None if cpu else measure.datasheet_peak(device["device_kind"])

    def modes_for(params: int):
        if torch_modes != "auto":
            return torch_modes.split(",")
        return ["eager", "compile"] if params < 20_000_000 else ["eager"]

    runs = [run_dtype(config, batch, d, rounds, reference, modes_for, peak_fn, threads,
                      want_profile=profile and i == 0, embed=embed) for i, d in enumerate(dtypes)]
    primary_dtype = PRIMARY.get(device["platform"], "bfloat16")
    primary = next((r for r in runs if r["dtype"] == primary_dtype), runs[0])
    peak = primary.get("peak_flops") or datasheet
    achieved = primary["model_flops_per_step"] / (primary["step_ms"] / 1e3)
    best = primary["model_flops_per_step"] / primary["timing"]["jax"]["min_s"]
    out = {
        "runs": runs, "primary_dtype": primary["dtype"],
        "step_ms": primary["step_ms"],
        "jax_images_per_sec": primary["jax_images_per_sec"],
        "jax_images_per_sec_per_core": primary["jax_images_per_sec"] / device["cores_for_per_core"],
        "torch_images_per_sec": primary.get("torch_eager_images_per_sec"),
        "speed_ratio": primary.get("torch_eager_speed_ratio"),
        "speed_ratio_vs_torch_compile": primary.get("torch_compile_speed_ratio"),
        "model_flops_per_sec": achieved,
        "peak_flops": peak,
        "peak_source": primary.get("peak_source") or (f"datasheet dense bf16 peak of {device['device_kind']}"
                                                      if datasheet else "unknown device: no MFU"),
        "model_flops_per_sec_best": best,
        # CPU: fastest step against the fastest matmul of the same run; accelerators: median step
        # against the datasheet.
        "mfu": ((best if cpu else achieved) / peak) if peak else None,
        "peak_memory_bytes": measure.device_peak_memory() or primary["memory"].get("peak_estimate"),
    }
    if pipeline:
        rate = input_rate.pipeline_images_per_sec(config, batch)
        out["pipeline"] = rate
        out["pipeline_images_per_sec"] = rate["images_per_sec"]
        out["pipeline_over_step_ratio"] = rate["images_per_sec"] / primary["jax_images_per_sec"]
    return out


def _spread(t: dict) -> str:
    return f"{1e3 * t['min_s']:.0f}-{1e3 * t['max_s']:.0f}"


def _fmt(x, spec=".1f"):
    return "-" if x is None else format(x, spec)


def format_report(r: dict) -> str:
    d = r["device"]
    lines = [f"fungizsl.bench {r['date']}: CLIP {r['config']} at {r['image_size']} px, batch {r['batch']}, "
             f"{d['platform']} {d['device_kind']} x{d['device_count']}"
             + (f", {d['threads']} threads" if "threads" in d else ""),
             "",
             f"{'contender':<22} {'dtype':<9} {'step ms':>9} {'img/s':>8} {'spread ms (min-max)':>20} {'JAX speedup':>12}"]
    for run in r["runs"]:
        for name, t in run["timing"].items():
            if name == "matmul_peak":
                continue
            ratio = run.get(f"{name}_speed_ratio") if name != "jax" else None
            lines.append(f"{name:<22} {run['dtype']:<9} {1e3 * t['median_s']:>9.1f} {run['batch'] / t['median_s']:>8.1f} "
                         f"{_spread(t):>20} "
                         f"{_fmt(ratio, '.2f') + 'x' if ratio else '':>12}")
        for mode, error in run.get("torch_errors", {}).items():
            lines.append(f"torch_{mode:<16} {run['dtype']:<9} failed: {error}")
    lines.append("")
    p = r["runs"][0]
    lines.append(f"model FLOPs/step (matmuls, fwd+bwd) {p['model_flops_per_step'] / 1e9:.2f} G; "
                 f"XLA cost analysis of the whole step {_fmt((p['xla_step_flops'] or 0) / 1e9, '.2f')} G")
    lines.append(f"achieved {r['model_flops_per_sec'] / 1e9:.1f} GFLOP/s (median step), "
                 f"{r['model_flops_per_sec_best'] / 1e9:.1f} (fastest step); peak {_fmt((r['peak_flops'] or 0) / 1e9)} "
                 f"GFLOP/s ({r['peak_source']}); MFU {_fmt(r['mfu'] and 100 * r['mfu'])} %")
    lines.append(f"images/s/core {r['jax_images_per_sec_per_core']:.2f}; compiled peak memory "
                 f"{_fmt((r['peak_memory_bytes'] or 0) / 2 ** 20)} MiB; initial loss JAX {p['initial_loss_jax']:.6f}"
                 + (f", torch {p['initial_loss_torch']:.6f}" if "initial_loss_torch" in p else ""))
    for run in r["runs"]:
        if "embed" in run:
            e = run["embed"]
            lines.append(f"image embedding {run['dtype']}: JAX {e['jax_images_per_sec']:.1f} img/s"
                         + (f", torch {e['torch_images_per_sec']:.1f} img/s ({e['speed_ratio']:.2f}x)" if "torch_images_per_sec" in e else ""))
    if "pipeline" in r:
        pl = r["pipeline"]
        lines.append(f"input pipeline alone {pl['images_per_sec']:.1f} img/s ({r['pipeline_over_step_ratio']:.1f}x what the "
                     f"step consumes; workers={pl['worker_count']}, cache_in_memory={pl['cache_in_memory']}) {pl['note']}")
    if "profile" in p:
        lines += ["", f"where the JAX {p['dtype']} step's op time goes:", op_profile.format_profile(p["profile"])]
    if "sweep" in r:
        lines += ["", "sweep (batch x resolution):", f"{'batch':>6} {'px':>5} {'step ms':>9} {'img/s':>8} {'peak MiB':>9}"]
        for row in r["sweep"]:
            if "skipped" in row:
                lines.append(f"{row['batch']:>6} {row['resolution']:>5}  skipped: {row['skipped']}")
            else:
                lines.append(f"{row['batch']:>6} {row['resolution']:>5} {row['step_ms']:>9.1f} {row['images_per_sec']:>8.1f} "
                             f"{row['memory'].get('peak_estimate', 0) / 2 ** 20:>9.1f}")
        lines += ["", "FSDP memory per device (compile-time):",
                  f"{'devices':>8} {'params MiB':>11} {'opt MiB':>9} {'temp MiB':>9} {'all-gather MiB':>15}"]
        for row in r["fsdp_memory"]:
            if "error" in row:
                lines.append(f"{row['devices']:>8}  failed: {row['error']}")
                continue
            lines.append(f"{row['devices']:>8} {row['params_bytes'] / 2 ** 20:>11.1f} {row['opt_state_bytes'] / 2 ** 20:>9.1f} "
                         f"{row['memory'].get('temp_size', 0) / 2 ** 20:>9.1f} "
                         f"{row['collectives_bytes'].get('all-gather', 0) / 2 ** 20:>15.1f}")
        lines += ["", "contrastive loss + grad communication (8 devices, dim 512), result bytes:"]
        comm = r["loss_communication"]
        for row in comm if isinstance(comm, list) else []:
            lines.append(f"  batch {row['batch']:>5} {row['version']:<9} " +
                         ", ".join(f"{k} {v / 2 ** 10:.0f} KiB" for k, v in row["collectives_bytes"].items()))
    return "\n".join(lines)
