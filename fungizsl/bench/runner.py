"""One benchmark run: builds every contender, times them interleaved, and assembles the record
that `python -m fungizsl.bench` prints and writes as JSON (see `__main__` for what is counted)."""

import os
import time

import jax
import numpy as np

from fungizsl.bench import clip_step, input_rate, measure
from fungizsl.bench import profile as op_profile
from fungizsl.models import two_towers

PRIMARY = {"cpu": "float32"}  # the headline dtype per platform; accelerators: bfloat16


def device_info() -> dict:
    info = measure.device_description()
    if info["platform"] == "cpu":
        info["cores"] = len(measure.available_cores())
        info["cores_for_per_core"] = info["cores"]
    else:
        info["cores_for_per_core"] = info["device_count"]
    return info


def thread_census() -> dict:
    """This process's threads by name (Linux /proc/self/task). XLA's CPU intra-op pool is the
    `tf_XLAEigen` threads; OpenMP (torch) and other pools keep the name `python`."""
    names: dict[str, int] = {}
    try:
        for task in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{task}/comm") as f:
                name = f.read().strip()
            names[name] = names.get(name, 0) + 1
    except OSError:
        return {}
    return dict(sorted(names.items()))


def threads_report(requested: int | None, torch_threads: dict | None) -> dict:
    census = thread_census()
    return {"requested": requested, "NPROC": os.environ.get("NPROC"),
            "xla_intra_op": census.get("tf_XLAEigen"),
            "xla_note": "XLA:CPU sizes its intra-op pool (tf_XLAEigen) and its client's dispatch pool "
                        "from NPROC, else from the cores; it has no separate inter-op pool "
                        "(independent thunks run on the intra-op pool)",
            **(torch_threads or {}), "process_threads": sum(census.values()) or None, "by_name": census}


def _reference_module(bench):
    """The module that builds the PyTorch reference of the bench's tower (imported only for
    --reference=torch): `torch_clip` (transformers' CLIPModel) for a ViT, `torch_convnet` for the
    plain conv tower; None for CLIP's ResNet, which has none."""
    if bench.vit_tower:
        from fungizsl.bench import torch_clip  # PyTorch: only for --reference=torch
        return torch_clip
    if two_towers.is_convnet(bench.model.config):
        from fungizsl.bench import torch_convnet  # PyTorch: only for --reference=torch
        return torch_convnet
    return None


def _torch_contenders(bench, batch_np, modes, dtype, threads, with_loss: bool = True):
    """{mode: (one timed step, first call's seconds)}, {mode: error}, the initial loss (None
    without `with_loss`), the torch batch."""
    from fungizsl.bench import torch_clip  # PyTorch: only for --reference=torch

    config = bench.config
    tbatch = torch_clip.to_torch_batch(batch_np)
    out, errors, loss0 = {}, {}, None
    reference = _reference_module(bench)
    decayed = torch_clip.decay_rule(bench.params)  # train.optim's mask, by torch name
    for mode in modes:
        hf = reference.build(bench.model, bench.params, threads, **bench.extra)
        stepper = torch_clip.TorchClipStep(hf, lr=config.lr, weight_decay=config.wd, b2=config.optim.b2,
                                           grad_clip_norm=config.optim.grad_clip_norm,
                                           class_aware=config.loss.class_aware,
                                           combine=config.loss.get("combine", "mean"), dtype=dtype, mode=mode,
                                           decayed=decayed)
        if with_loss and loss0 is None:
            loss0 = stepper.loss(tbatch)
        try:
            start = time.perf_counter()
            stepper(tbatch)  # torch.compile compiles here
            out[mode] = (lambda s=stepper: s(tbatch), time.perf_counter() - start)
        except Exception as error:  # noqa: BLE001 - torch.compile failures are reported, not fatal
            errors[mode] = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
    return out, errors, loss0, tbatch


NO_TORCH_TOWER = ("no PyTorch reference for a {} tower: transformers' CLIPModel has a ViT image tower only "
                  "and bench/torch_convnet.py covers the plain conv tower")


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
    later_modes = []

    def add_torch(modes, into):
        first = "initial_loss_torch" not in record
        torch_steps, errors, loss0, _ = _torch_contenders(bench, batch_np, modes, dtype, threads, with_loss=first)
        if first:
            record["initial_loss_torch"] = loss0
        record.setdefault("torch_errors", {}).update(errors)
        record.setdefault("torch_first_call_s", {}).update({m: s for m, (_, s) in torch_steps.items()})
        into.update({f"torch_{m}": fn for m, (fn, _) in torch_steps.items()})

    if reference == "torch" and _reference_module(bench) is None:
        record["torch_errors"] = {"all": NO_TORCH_TOWER.format(config.model.arch)}
    elif reference == "torch":
        # Each PyTorch mode gets its own interleaved series against JAX, and is built only when
        # its series starts: with a torch.compile'd model in the process, eager steps ran 11 %
        # slower (cnn_tiny: 125 vs 111 ms), which made JAX look faster than it is.
        modes = list(torch_modes(record["params"]))
        add_torch(modes[:1], contenders)
        later_modes = modes[1:]
    timing = measure.timed_rounds(contenders, rounds)
    record["timing"] = timing
    series = {name: timing for name in contenders}
    for mode in later_modes:
        more = {"jax": step}
        add_torch([mode], more)
        if len(more) > 1:
            record.setdefault("timing_by_mode", {})[mode] = measure.timed_rounds(more, rounds)
            series[f"torch_{mode}"] = record["timing_by_mode"][mode]
    jax_t = _headline_times(timing["contenders"]["jax"])
    record["step_ms"] = 1e3 * jax_t["median_s"]
    record["step_ms_fastest"] = 1e3 * jax_t["min_s"]
    record["jax_images_per_sec"] = batch / jax_t["median_s"]
    record["cpu_s_per_step"] = {n: _headline_times(t["contenders"][n])["cpu_s_per_call_median"]
                                for n, t in series.items() if n != "matmul_peak"}
    if peak_fn is not None:
        clean = [s for s, r in zip(peak_samples[-rounds:], timing["rounds"]) if not r["contended"]] or peak_samples
        record["peak_flops"] = peak_fn[1] / min(clean)
        record["peak_flops_median"] = peak_fn[1] / float(np.median(clean))
        record["peak_source"] = (f"measured: fastest {peak_fn[2]}^3 fp32 matmul in XLA over the same interleaved "
                                 "rounds (clean ones where any); MFU uses the fastest step")
    for name, t in series.items():
        if name.startswith("torch_"):
            record[f"{name}_images_per_sec"] = batch / _headline_times(t["contenders"][name])["median_s"]
            record[f"{name}_speed_ratio"] = measure.clean_ratio(t, name, "jax")
    if embed:
        record["embed"] = _embed(bench, batch_np, rounds, reference, dtype, threads)
    if want_profile:
        record["profile"] = op_profile.profile_step(compiled, step, steps=2)
    return record


def _headline_times(t: dict) -> dict:
    """A contender's summary over the clean rounds, or over all rounds where none was clean."""
    return t["clean"] or t


def _embed(bench, batch_np, rounds, reference, dtype, threads) -> dict:
    fn = clip_step.embed_images_fn(bench)
    images = clip_step.place_batch(bench, {"image": batch_np["image"]})["image"]
    params = jax.device_put(bench.params)
    compiled = fn.lower(params, images).compile()
    contenders = {"jax": lambda: measure.block(compiled(params, images))}
    if reference == "torch" and _reference_module(bench) is not None:
        from fungizsl.bench import torch_clip  # PyTorch: only for --reference=torch

        hf = _reference_module(bench).build(bench.model, bench.params, threads, **bench.extra).eval()
        embed = torch_clip.make_embed_images(hf, dtype)
        pixels = torch_clip.to_torch_batch(batch_np)["pixel_values"]
        contenders["torch"] = lambda: embed(pixels)
    timing = measure.timed_rounds(contenders, rounds)
    out = {f"{k}_images_per_sec": len(batch_np["image"]) / _headline_times(v)["median_s"]
           for k, v in timing["contenders"].items()}
    out["clean_rounds"], out["rounds"] = timing["clean_rounds"], len(timing["rounds"])
    if "torch" in timing["contenders"]:
        out["speed_ratio"] = measure.clean_ratio(timing, "torch", "jax")
    return out


def run_all(config, *, batch, dtypes, rounds, reference, torch_modes, profile, pipeline, embed,
            threads: int | None = None, peak_matmul: int = 4096) -> dict:
    """`threads`: PyTorch's pools (XLA's are fixed when its backend starts: NPROC, set by
    `__main__`); None: the cores this process may run on."""
    device = device_info()
    cpu = device["platform"] == "cpu"
    threads = threads or device.get("cores", 1)
    torch_threads = None
    if reference == "torch":
        from fungizsl.bench import torch_clip  # PyTorch: only for --reference=torch

        torch_threads = torch_clip.set_threads(threads)
    peak_fn = (*measure.matmul_contender(peak_matmul), peak_matmul) if cpu and peak_matmul else None
    datasheet = None if cpu else measure.datasheet_peak(device["device_kind"])
    machine_start = {"loadavg": list(os.getloadavg()), "cores": len(measure.available_cores())}

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
    best = primary["model_flops_per_step"] / (primary["step_ms_fastest"] / 1e3)
    eager = primary.get("torch_eager_speed_ratio") or {}
    compiled = primary.get("torch_compile_speed_ratio") or {}
    timing = primary["timing"]
    out = {
        "runs": runs, "primary_dtype": primary["dtype"],
        "threads": threads_report(threads, torch_threads),
        "machine": {"start": machine_start, "end": {"loadavg": list(os.getloadavg())},
                    "contended_cores": timing["contended_cores"], "method": timing["method"]},
        "clean_rounds": timing["clean_rounds"], "rounds": len(timing["rounds"]),
        "step_ms": primary["step_ms"], "step_ms_fastest": primary["step_ms_fastest"],
        "cpu_s_per_step": primary["cpu_s_per_step"],
        "jax_images_per_sec": primary["jax_images_per_sec"],
        "jax_images_per_sec_per_core": primary["jax_images_per_sec"] / device["cores_for_per_core"],
        "torch_images_per_sec": primary.get("torch_eager_images_per_sec"),
        # JAX's speedup over PyTorch eager: median of per-round ratios over clean rounds only;
        # None when no round was clean (speed_ratio_note says so) or with no reference.
        "speed_ratio": eager.get("median"), "speed_ratio_fastest": eager.get("fastest"),
        "speed_ratio_note": eager.get("note") or primary.get("torch_errors", {}).get("all"),
        "speed_ratio_vs_torch_compile": compiled.get("median"),
        "speed_ratio_vs_torch_compile_fastest": compiled.get("fastest"),
        "model_flops_per_sec": achieved,
        "peak_flops": peak,
        "peak_source": primary.get("peak_source") or (f"datasheet dense bf16 peak of {device['device_kind']}"
                                                      if datasheet else "no peak (--peak_matmul=0 on CPU, or an "
                                                      "unknown device): no MFU"),
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


def _fmt(x, spec=".1f"):
    return "-" if x is None else format(x, spec)


def _ratio_text(ratio: dict | None) -> str:
    if not ratio:
        return ""
    if ratio["median"] is None:
        return "no clean round"
    return f"{ratio['median']:.2f}x / {ratio['fastest']:.2f}x"


def _round_state(rec: dict) -> str:
    if not rec["contended"]:
        return "clean"
    during = rec.get("contended_calls")
    return "CONTENDED" + (f" (during {', '.join(during)})" if during else "")


def format_rounds(timing: dict) -> list[str]:
    """One line per timed round: wall time, cores we and the others used, load average."""
    lines = [(f"{'round':>5} {'wall s':>7} {'our cores':>9} {'others cores':>12} {'load 1m before-after':>21}  "
              f"(contended: others > {timing['contended_cores']} cores; {timing['method']})")]
    for rec in timing["rounds"]:
        load = f"{rec['loadavg_before'][0]:.2f}-{rec['loadavg_after'][0]:.2f}"
        lines.append(f"{rec['index']:>5} {rec['wall_s']:>7.2f} {rec['own_cores']:>9.2f} {rec['others_cores']:>12.2f} "
                     f"{load:>21}  {_round_state(rec)}")
    return lines


def _contender_lines(run: dict, timing: dict, with_jax: bool) -> list[str]:
    """Table rows of one interleaved series (a later PyTorch mode's series repeats no JAX row)."""
    clean = f"{timing['clean_rounds']}/{len(timing['rounds'])}"
    lines = []
    for name, t in timing["contenders"].items():
        if name == "matmul_peak" or (name == "jax" and not with_jax):
            continue
        h = _headline_times(t)
        cpu = h["cpu_s_per_call_median"]
        lines.append(f"{name:<16} {run['dtype']:<9} {clean:>6} {1e3 * h['median_s']:>10.1f} {1e3 * h['min_s']:>11.1f} "
                     f"{run['batch'] / h['median_s']:>8.1f} {cpu:>11.3f} {cpu / h['median_s']:>6.2f} "
                     f"{_ratio_text(run.get(f'{name}_speed_ratio')):>16}")
    return lines


def format_report(r: dict) -> str:
    d, th, machine = r["device"], r["threads"], r["machine"]
    torch_threads = (f", torch intra-op {th['torch_intra_op']} inter-op {th['torch_inter_op']}"
                     if "torch_intra_op" in th else "")
    cores = f", {d['cores']} cores" if "cores" in d else ""
    load = {k: "/".join(f"{x:.2f}" for x in machine[k]["loadavg"]) for k in ("start", "end")}
    lines = [(f"fungizsl.bench {r['date']}: CLIP {r['config']} at {r['image_size']} px, batch {r['batch']}, "
              f"{d['platform']} {d['device_kind']} x{d['device_count']}{cores}"),
             (f"threads: XLA intra-op {th['xla_intra_op'] or '-'} (NPROC={th['NPROC']}){torch_threads}; "
              f"{th['process_threads']} threads in the process; malloc: {r.get('allocator', '?')} "
              "(both sides share it)"),
             f"load average (1/5/15 min) at start {load['start']}, at end {load['end']}",
             "",
             ("times over clean rounds (all rounds where none was clean); speedup = torch time / JAX time, "
              "median of per-round ratios / fastest vs fastest"),
             (f"{'contender':<16} {'dtype':<9} {'clean':>6} {'median ms':>10} {'fastest ms':>11} {'img/s':>8} "
              f"{'CPU s/step':>11} {'cores':>6} {'JAX speedup':>16}")]
    for run in r["runs"]:
        for index, timing in enumerate([run["timing"], *run.get("timing_by_mode", {}).values()]):
            lines += _contender_lines(run, timing, with_jax=index == 0)
        for mode, error in run.get("torch_errors", {}).items():
            label, state = ("torch", "skipped") if mode == "all" else (f"torch_{mode}", "failed")
            lines.append(f"{label:<16} {run['dtype']:<9} {state}: {error}")
    lines.append("")
    if r.get("speed_ratio") is not None:
        lines.append(f"JAX speedup over PyTorch eager ({r['primary_dtype']}): {r['speed_ratio']:.2f}x median, "
                     f"{r['speed_ratio_fastest']:.2f}x fastest vs fastest; {r['speed_ratio_note']}")
    elif r.get("speed_ratio_note"):
        lines.append(f"JAX speedup over PyTorch eager ({r['primary_dtype']}): none reported, {r['speed_ratio_note']}")
    if r.get("speed_ratio_vs_torch_compile") is not None:
        lines.append(f"JAX speedup over torch.compile: {r['speed_ratio_vs_torch_compile']:.2f}x median, "
                     f"{r['speed_ratio_vs_torch_compile_fastest']:.2f}x fastest vs fastest")
    primary = next(run for run in r["runs"] if run["dtype"] == r["primary_dtype"])
    lines += [f"rounds ({r['primary_dtype']}):"] + format_rounds(primary["timing"]) + [""]
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
                         + (f", torch {e['torch_images_per_sec']:.1f} img/s ({_ratio_text(e['speed_ratio'])})"
                            if "torch_images_per_sec" in e else "")
                         + f"; {e['clean_rounds']} of {e['rounds']} rounds clean")
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
