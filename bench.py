"""Benchmark the train step (or the sampler) of a config: compile time, ms/step, tokens/s, FLOP/s, MFU, memory.

  python bench.py --config=configs/shakespeare_char_looped.py:cpu
  python bench.py --config=configs/shakespeare_char.py:cpu --steps=50 --json=bench.json
  python bench.py --config=configs/gpt2_owt_looped.py --config.data.batch_size=16 --mode=sample
  python bench.py --config=configs/shakespeare_char_looped.py --mode=sample --sample_batch_size=1,8 --max_new_tokens=500
  python bench.py --mode=sample --out_dir=RUN --exits=kl:0.001,gate:0.5 --draft=4:8 --sample_batch_size=1,8,64 --profile
  python bench.py --config=configs/shakespeare_char_looped.py:cpu --roofline=cpu   # bound vs the measured step
  python bench.py --config=configs/gpt2_owt_looped.py --lower_for=cuda,tpu --roofline=h100   # no device needed
  python bench.py --config=configs/gpt2_owt_looped.py --suite=device --json=device.json   # scripts/device_check.sh

Random token batches (no dataset needed; vocab_size comes from meta.json when the dataset is prepared).
On CPU it also reports the matmul-peak fraction: model FLOP/s / a numpy fp32 matmul's FLOP/s. Sample mode
times the KV-cache decoder against naive full recomputation (nanoLOOP's generate) at random init, in one
run per batch size; with --out_dir/--ckpt (a trained model) or --exits/--draft it prints one table of batch x
{no exit, each exit rule, each speculative draft} -> tokens/s, iterations/token and the ratio to no exit
(nanoloop_jax/tools/decode_bench.py). The code is nanoloop_jax/tools/benchmark.py. See BENCHMARKS.md.
"""

import json
import os
import sys

from absl import app, flags
from ml_collections import config_flags

from nanoloop_jax.errors import UserError

config_flags.DEFINE_config_file("config", None, "Path to a configs/*.py file.", lock_config=True)
flags.DEFINE_enum("mode", "train", ["train", "sample"], "What to time: the train step or the sampler.")
flags.DEFINE_integer("steps", 20, "Timed steps (train: the median is reported).")
flags.DEFINE_integer("warmup", 3, "Untimed steps after compilation.")
flags.DEFINE_list("sample_batch_size", ["1"], "Sample mode: sequences decoded at once; several (1,8) run in turn.")
flags.register_validator(
    "sample_batch_size",
    lambda v: bool(v) and all(s.isdigit() and int(s) > 0 for s in v),
    "--sample_batch_size takes positive integers, e.g. 1,8",
)
flags.DEFINE_integer("max_new_tokens", 256, "Sample mode: tokens generated per sequence.")
flags.DEFINE_integer("naive_steps", 20, "Sample mode: context windows the naive decoder is timed on.")
flags.DEFINE_integer("repeats", 3, "Sample mode: timed runs of each decoder (the median is reported).")
flags.DEFINE_string(
    "out_dir", None, "Sample mode: time a trained run's params (a nanoloop-jax out_dir) instead of --config's at init."
)
flags.DEFINE_string("ckpt", None, "Sample mode: time a nanoLOOP ckpt.pt's params.")
flags.DEFINE_list(
    "exits", [], "Sample mode: exit rules for the table, CRITERION:THRESHOLD (argmax:PATIENCE), e.g. kl:0.001."
)
flags.DEFINE_list(
    "draft",
    [],
    "Sample mode: self-speculative drafts for the table, DRAFT_N_LOOP:DRAFT_TOKENS[:CRITERION:THRESHOLD], e.g. "
    "4:8 (a fixed draft depth) or 16:8:kl:0.001 (drafts stopped by an exit rule).",
)
flags.DEFINE_integer("n_loop", None, "Sample mode: verifying depth of the table (default: the model's n_loop).")
flags.DEFINE_integer("min_loops", 1, "Sample mode: iterations every token computes before an exit rule may stop it.")
flags.DEFINE_enum("window", "slide", ["slide", "restart"], "Sample mode: past block_size, as sample.py --window.")
flags.DEFINE_float("temperature", 0.0, "Sample mode table: 0 = greedy (speculative text equals plain), else sampled.")
flags.DEFINE_bool("compacted_too", False, "Sample mode table: each exit rule also with row compaction.")
flags.DEFINE_bool(
    "profile", False, "Sample mode: where a decode step's time goes (fixed part, per iteration, exit test)."
)
flags.DEFINE_string("json", None, "Also write the figures to this JSON file.")
flags.DEFINE_list(
    "lower_for", [], "Lower train/eval/decode steps for these platforms (cpu, cuda, rocm, tpu); no device."
)
flags.DEFINE_list("lower_mesh", ["-1", "2", "2"], "--lower_for: (data, fsdp, tensor) mesh over the (fake) devices.")
flags.DEFINE_enum("roofline", None, ["h100", "h200", "a100", "v4", "v5e", "v5p", "cpu"], "Print the step's roofline.")
flags.DEFINE_enum(
    "suite", None, ["device"], "device: the accelerator checks and figures (nanoloop_jax/tools/device_check.py)."
)
FLAGS = flags.FLAGS


def lower_for(benchmark) -> int:
    """--lower_for: one line per platform (and its roofline with --roofline); 1 if any program failed."""
    from nanoloop_jax.tools import lowering

    ok, cfg = True, FLAGS.config
    for platform in FLAGS.lower_for:
        try:
            res = lowering.lower_for(cfg, platform, tuple(int(s) for s in FLAGS.lower_mesh))
        except UserError as err:  # a bad platform name or a mesh that does not fit the devices
            print(f"error: {err}", file=sys.stderr)
            return 1
        print(res.line(), flush=True)
        ok &= res.ok
        if FLAGS.roofline and FLAGS.roofline != "cpu" and "train_step" in res.lowered:
            tokens = cfg.data.gradient_accumulation_steps * cfg.data.batch_size * res.model_config.block_size
            print(
                benchmark.lowered_roofline(res.lowered["train_step"], res.model_config, tokens, FLAGS.roofline).line()
            )
    return 0 if ok else 1


def sample_table(model) -> dict:
    """Time --exits and --draft against no exit on `model` (decode_bench.BenchModel) and print the table."""
    from nanoloop_jax.tools import decode_bench
    from nanoloop_jax.tools.frontier import parse_exit

    n_loop = FLAGS.n_loop or model.config.n_loop
    vs = decode_bench.variants(
        n_loop,
        [parse_exit(e) for e in FLAGS.exits],
        [decode_bench.parse_draft(d, n_loop) for d in FLAGS.draft],
        FLAGS.min_loops,
        FLAGS.compacted_too,
    )
    print(f"{model.description}; --window={FLAGS.window} past block_size {model.config.block_size}", flush=True)
    batch_sizes = [int(b) for b in FLAGS.sample_batch_size]
    prof = None
    if FLAGS.profile:
        prof = decode_bench.profile(
            model, batch_sizes, n_loop, max_new_tokens=FLAGS.max_new_tokens, repeats=FLAGS.repeats, window=FLAGS.window
        )
        print(decode_bench.format_profile(prof, n_loop), flush=True)
    rows = decode_bench.time_table(
        model.config,
        model.params,
        model.sample_config(FLAGS.temperature),
        vs,
        batch_sizes,
        prompt=model.prompt,
        max_new_tokens=FLAGS.max_new_tokens,
        repeats=FLAGS.repeats,
        window=FLAGS.window,
    )
    print(decode_bench.format_table(rows, n_loop), flush=True)
    return {"mode": "sample_table", "model": model.description, "window": FLAGS.window, "rows": rows, "profile": prof}


def main(argv: list[str]) -> int:
    from nanoloop_jax.cli import entry_point_error

    trained = FLAGS.mode == "sample" and (FLAGS.out_dir or FLAGS.ckpt)
    if error := entry_point_error(argv, FLAGS.config or ("trained" if trained else None)):
        print(f"error: {error}", file=sys.stderr)
        return 1
    if FLAGS.lower_for and "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
        # a sharded mesh to lower over: 8 fake CPU devices (read when JAX creates its CPU backend, i.e. later)
        os.environ["XLA_FLAGS"] = (
            os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
        ).strip()
    from nanoloop_jax import cpu_defaults, log
    from nanoloop_jax.tools import benchmark, decode_bench

    cpu_defaults.apply_if_cpu()
    log.quiet_libraries()
    if FLAGS.lower_for:
        return lower_for(benchmark)
    if FLAGS.suite == "device":
        from nanoloop_jax.tools import device_check

        return device_check.main(FLAGS.config, json_path=FLAGS.json)
    try:
        if trained:
            result = sample_table(decode_bench.load_trained(FLAGS.out_dir, FLAGS.ckpt))
            if FLAGS.json:
                with open(FLAGS.json, "w") as f:
                    json.dump(result, f, indent=2)
            return 0
        print(benchmark.vocab_note(FLAGS.config))
        if FLAGS.mode == "train":
            result = benchmark.run_train_benchmark(FLAGS.config, steps=FLAGS.steps, warmup=FLAGS.warmup)
        else:
            results = []
            for batch_size in FLAGS.sample_batch_size:
                results.append(
                    benchmark.run_sample_benchmark(
                        FLAGS.config,
                        batch_size=int(batch_size),
                        max_new_tokens=FLAGS.max_new_tokens,
                        naive_steps=FLAGS.naive_steps,
                        repeats=FLAGS.repeats,
                        window=FLAGS.window,
                    )
                )
                print(benchmark.format_result(results[-1]), flush=True)
            if FLAGS.exits or FLAGS.draft:
                results.append(sample_table(decode_bench.init_model(FLAGS.config)))
            result = results[0] if len(results) == 1 else results  # JSON: one dict, or a list for several batches
    except UserError as err:  # anything else is a bug: its traceback stays
        print(f"error: {err}", file=sys.stderr)
        return 1
    if FLAGS.mode == "train":
        print(benchmark.format_result(result))
    if FLAGS.roofline and FLAGS.mode == "train":
        bound = benchmark.train_roofline(result, FLAGS.roofline)
        result["roofline"] = {"chip": FLAGS.roofline, "step_ms": 1e3 * bound.step_s, "mfu_ceiling": bound.mfu_ceiling}
        print(bound.line())
    if FLAGS.json:
        with open(FLAGS.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    from nanoloop_jax.cli import parse_flags

    app.run(lambda argv: sys.exit(main(argv)), flags_parser=parse_flags)
