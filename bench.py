"""Benchmark the train step (or the sampler) of a config: compile time, ms/step, tokens/s, FLOP/s, MFU, memory.

  python bench.py --config=configs/shakespeare_char_looped.py:cpu
  python bench.py --config=configs/shakespeare_char.py:cpu --steps=50 --json=bench.json
  python bench.py --config=configs/gpt2_owt_looped.py --config.data.batch_size=16 --mode=sample

Random token batches (no dataset needed; vocab_size comes from meta.json when the dataset is prepared).
On CPU it also reports the matmul-peak fraction: model FLOP/s / a numpy fp32 matmul's FLOP/s. See BENCHMARKS.md.
"""

import json
import sys

from absl import app, flags
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", None, "Path to a configs/*.py file.", lock_config=True)
flags.DEFINE_enum("mode", "train", ["train", "sample"], "What to time: the train step or the sampler.")
flags.DEFINE_integer("steps", 20, "Timed steps (train: the median is reported).")
flags.DEFINE_integer("warmup", 3, "Untimed steps after compilation.")
flags.DEFINE_integer("sample_batch_size", 1, "Sample mode: sequences decoded at once.")
flags.DEFINE_integer("max_new_tokens", 256, "Sample mode: tokens generated per sequence.")
flags.DEFINE_string("json", None, "Also write the figures to this JSON file.")
FLAGS = flags.FLAGS


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        print(f"error: unexpected arguments {argv[1:]}; use --config.<field>=value", file=sys.stderr)
        return 1
    if FLAGS.config is None:
        print("error: pass --config=configs/<name>.py (see configs/)", file=sys.stderr)
        return 1
    from nanoloop_jax import benchmark

    try:
        print(benchmark.vocab_note(FLAGS.config))
        if FLAGS.mode == "train":
            result = benchmark.run_train_benchmark(FLAGS.config, steps=FLAGS.steps, warmup=FLAGS.warmup)
        else:
            result = benchmark.run_sample_benchmark(
                FLAGS.config, batch_size=FLAGS.sample_batch_size, max_new_tokens=FLAGS.max_new_tokens
            )
    except (ValueError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(benchmark.format_result(result))
    if FLAGS.json:
        with open(FLAGS.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    from nanoloop_jax.cli import parse_flags

    app.run(lambda argv: sys.exit(main(argv)), flags_parser=parse_flags)
