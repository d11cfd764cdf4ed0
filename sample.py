"""Sample from a trained model, with nanoLOOP's sample.py flags.

  python sample.py --out_dir=out-shakespeare-char-looped
  python sample.py --out_dir=out-shakespeare-char --start="What is the answer?" --num_samples=5 --max_new_tokens=100
  python sample.py --ckpt=path/to/nanoLOOP/ckpt.pt --start=FILE:prompt.txt --n_loop=8 --exit_threshold=0.01

--out_dir holds a nanoloop-jax checkpoint (train.py, or python -m nanoloop_jax.tools.convert) or a nanoLOOP
ckpt.pt. The tokenizer is the character table of the checkpoint's dataset (data/<dataset>/meta.json,
or --data_dir), else GPT-2 BPE. All num_samples samples are decoded together as one batch; the first
one is printed as it is produced, every 32 tokens, and the others follow when the batch is done.
Informational lines go to stderr, samples to stdout; a bad input is one line on stderr and exit code 1.
"""

import dataclasses
import os
import re
import sys

from absl import app, flags

from nanoloop_jax.errors import ConfigError, UserError

flags.DEFINE_string("out_dir", "out", "Directory with a nanoloop-jax checkpoint or a nanoLOOP ckpt.pt.")
flags.DEFINE_string("ckpt", None, "A nanoLOOP ckpt.pt to load instead of --out_dir.")
flags.DEFINE_string("start", "\n", 'The prompt, or "FILE:prompt.txt" to read it from a file.')
flags.DEFINE_integer("num_samples", 10, "Number of samples to draw (decoded together as a batch).")
flags.DEFINE_integer("max_new_tokens", 500, "Tokens generated in each sample.")
flags.DEFINE_float("temperature", 0.8, "1.0 = no change, < 1.0 = less random, > 1.0 = more random; 0 = greedy.")
flags.DEFINE_integer(
    "top_k", 200, "Keep only the top_k most likely tokens (0 = off; the default is capped at the vocab)."
)
flags.DEFINE_float("top_p", None, "Nucleus sampling: keep the smallest set of tokens with probability >= top_p.")
flags.DEFINE_integer("seed", 1337, "Random seed.")
flags.DEFINE_integer("n_loop", None, "Iterations of the recurrent block at test time (default: the trained value).")
flags.DEFINE_enum(
    "exit_criterion",
    None,
    ["none", "latent_diff", "kl", "entropy", "argmax", "gate"],
    "Per-token adaptive exit (default: latent_diff when --exit_threshold is given, else none); gate: the model's "
    "learned exit gate, stopping once its cumulative halting probability reaches --exit_threshold.",
)
flags.DEFINE_float("exit_threshold", None, "Exit once the criterion's change between iterations is below this.")
flags.DEFINE_integer("min_loops", 1, "Adaptive exit: iterations every token computes before it may exit.")
flags.DEFINE_integer("exit_patience", 2, "--exit_criterion=argmax: iterations in a row with an unchanged argmax.")
flags.DEFINE_integer("kv_share", 0, "K > 0: iteration i uses KV-cache slot i mod K (fixed cache size at any depth).")
flags.DEFINE_bool("warm_start", False, "A token's recurrent state starts from the previous token's final state.")
flags.DEFINE_integer("draft_n_loop", 0, "Self-speculative decoding: draft tokens with this many iterations (0: off).")
flags.DEFINE_integer("draft_tokens", 4, "Self-speculative decoding: tokens drafted per round.")
flags.DEFINE_string(
    "draft_exit",
    None,
    "Self-speculative decoding with drafts stopped by an exit rule, CRITERION:THRESHOLD (e.g. kl:0.001): each "
    "drafted token loops until the rule fires, at most --draft_n_loop iterations (default: n_loop).",
)
flags.DEFINE_bool("stats", False, "After the samples, print tokens/s, iterations per token and the KV-cache size.")
flags.DEFINE_enum(
    "window",
    "slide",
    ["slide", "restart"],
    "Past block_size with learned positions: slide = nanoLOOP's crop (one re-prefill per token), "
    "restart = from the last block_size/2 tokens (KV-cache speed). rope/none always slide at KV-cache speed.",
)
flags.DEFINE_string("data_dir", None, "Dataset dir whose meta.json gives the tokenizer (default: the checkpoint's).")
# nanoLOOP's remaining sample.py flags, so its command lines work unchanged
flags.DEFINE_string("init_from", "resume", "Only 'resume' (from --out_dir or --ckpt), as in nanoLOOP.")
flags.DEFINE_string("device", None, "'cpu' forces the CPU; 'cuda', 'cuda:0', ... use JAX's default accelerator.")
flags.DEFINE_enum("dtype", None, ["float32", "bfloat16", "float16"], "Compute dtype (default: the checkpoint's).")
flags.DEFINE_bool("compile", False, "Accepted for nanoLOOP compatibility; decoding is always jit-compiled.")
FLAGS = flags.FLAGS
CHUNK = 32  # tokens per jitted decode call: the streaming granularity
SEPARATOR = "---------------"


class SampleError(UserError):
    """A bad flag or input, reported as one line."""


def read_prompt(start: str) -> str:
    """The prompt text of --start: the text itself, or the contents of FILE:path (read before the model loads)."""
    if not start.startswith("FILE:"):
        return start
    try:
        with open(start[5:], encoding="utf-8") as f:
            return f.read()
    except OSError as e:
        raise SampleError(f"cannot read the prompt file {start[5:]!r}: {e.strerror}") from None


def encode_prompt(tokenizer, start: str) -> list[int]:
    """Prompt ids; an empty prompt becomes a newline (char-level) or <|endoftext|> (GPT-2), as in nanoGPT."""
    if start:
        return tokenizer.encode(start)
    if tokenizer.eot_token is not None:
        return [tokenizer.eot_token]
    try:
        return tokenizer.encode("\n")
    except UserError:  # the tokenizer's one line: "\n" is not in the vocabulary
        print("empty prompt and no newline in the vocabulary: starting from token 0", file=sys.stderr)
        return [0]


def check_flags() -> None:
    """Raise SampleError for the first bad flag that needs no model to judge."""
    if FLAGS.init_from != "resume":
        raise SampleError(f"--init_from={FLAGS.init_from!r} is not supported; only 'resume' (a trained checkpoint)")
    if FLAGS.device is not None and not re.fullmatch(r"cpu|(cuda|gpu)(:\d+)?", FLAGS.device):
        raise SampleError(f"--device={FLAGS.device!r} is not supported; use 'cpu' or 'cuda'")
    if FLAGS.max_new_tokens <= 0:
        raise SampleError(f"--max_new_tokens must be positive, got {FLAGS.max_new_tokens}")
    if FLAGS.num_samples <= 0:
        raise SampleError(f"--num_samples must be positive, got {FLAGS.num_samples}")
    if FLAGS.temperature < 0:
        raise SampleError(f"--temperature must be >= 0 (0 = greedy), got {FLAGS.temperature}")
    if FLAGS.top_k < 0:
        raise SampleError(f"--top_k must be >= 0 (0 = off), got {FLAGS.top_k}")
    if FLAGS.top_p is not None and not 0 < FLAGS.top_p <= 1:
        raise SampleError(f"--top_p must be in (0, 1], got {FLAGS.top_p}")
    if FLAGS.n_loop is not None and FLAGS.n_loop < 1:
        raise SampleError(f"--n_loop must be >= 1, got {FLAGS.n_loop}")
    if FLAGS.exit_threshold is not None and FLAGS.exit_threshold < 0:
        raise SampleError(f"--exit_threshold must be >= 0, got {FLAGS.exit_threshold}")
    if FLAGS.exit_criterion not in (None, "none", "argmax") and FLAGS.exit_threshold is None:
        raise SampleError(f"--exit_criterion={FLAGS.exit_criterion} needs --exit_threshold")


def decode_config(trained_n_loop: int):
    """The DecodeConfig the flags ask for (validated: a bad combination is one line)."""
    from nanoloop_jax.decode.recurrence import DecodeConfig

    criterion = FLAGS.exit_criterion or ("latent_diff" if FLAGS.exit_threshold else "none")
    n_loop = FLAGS.n_loop or trained_n_loop
    draft_exit, draft_eps = "none", 0.0
    if FLAGS.draft_exit:
        from nanoloop_jax.tools.frontier import parse_exit

        try:
            draft_exit, draft_eps = parse_exit(FLAGS.draft_exit)
        except UserError:
            raise SampleError(f"--draft_exit={FLAGS.draft_exit!r} must be CRITERION:THRESHOLD, e.g. kl:0.001") from None
    dc = DecodeConfig(
        n_loop=n_loop,
        exit_criterion=criterion,
        min_loops=FLAGS.min_loops,
        exit_patience=FLAGS.exit_patience,
        kv_share=FLAGS.kv_share,
        warm_start=FLAGS.warm_start,
        draft_n_loop=FLAGS.draft_n_loop or (n_loop if draft_exit != "none" else 0),
        draft_tokens=FLAGS.draft_tokens,
        draft_exit=draft_exit,
        draft_threshold=draft_eps,
    )
    try:
        return dc.validate()
    except ConfigError as err:
        raise SampleError(f"{err} (flags --n_loop, --kv_share, --draft_n_loop, ...)") from None


def effective_top_k(vocab_size: int) -> int | None:
    """--top_k for this vocabulary (None = off): the default is capped like nanoGPT's min(top_k, vocab)."""
    if FLAGS.top_k > vocab_size:
        if FLAGS["top_k"].present:  # an explicit value larger than the vocabulary is a mistake
            raise SampleError(f"--top_k={FLAGS.top_k} is larger than the {vocab_size}-token vocabulary")
        return None
    return FLAGS.top_k or None


def write_samples(
    decoder, params, tokenizer, prompt_ids: list[int], *, num_samples, max_new_tokens, key, exit_threshold, out
):
    """Decode the batch, streaming sample 0 to `out` chunk by chunk; return (Generation, seconds of decoding).

    The decoder counts the seconds its calls spent compiling (sampling.CompileTimed): the seconds are the
    decoding calls' alone, compile time left out, so the tokens/s of --stats exists however few tokens.
    """
    import time

    import numpy as np

    from nanoloop_jax.decode.sampling import Generation, concat_generations

    prompt_BxP = np.tile(np.asarray(prompt_ids, np.int32), (num_samples, 1))
    parts: list[Generation] = []
    shown, seconds = "", 0.0
    compile_s, t0 = decoder.compile_seconds(), time.perf_counter()
    for part in decoder.stream(params, prompt_BxP, max_new_tokens, key, exit_threshold=exit_threshold):
        seconds += time.perf_counter() - t0 - (decoder.compile_seconds() - compile_s)
        parts.append(part)
        text = tokenizer.decode(prompt_ids + np.concatenate([p.tokens_BxN[0] for p in parts]).tolist())
        # hold back a trailing partial UTF-8 character (GPT-2 BPE can split one across tokens)
        text = text.rstrip("\ufffd")
        out.write(text[len(shown) :])
        out.flush()
        shown = text
        compile_s, t0 = decoder.compile_seconds(), time.perf_counter()
    gen = concat_generations(parts)
    out.write(tokenizer.decode(prompt_ids + gen.tokens_BxN[0].tolist())[len(shown) :] + "\n" + SEPARATOR + "\n")
    for b in range(1, num_samples):
        out.write(tokenizer.decode(prompt_ids + gen.tokens_BxN[b].tolist()) + "\n" + SEPARATOR + "\n")
    out.flush()
    return gen, seconds


def check_device() -> None:
    """--device=cuda[:N] needs a GPU that JAX sees (a CPU-only jax would otherwise run on the CPU unasked)."""
    import jax

    if FLAGS.device is None or FLAGS.device == "cpu":
        return
    backend = jax.default_backend()
    if backend != "gpu":
        raise SampleError(
            f"--device={FLAGS.device} but JAX finds no GPU (its backend is {backend}); "
            "use --device=cpu, or install CUDA JAX with `uv sync --extra cuda12`"
        )
    index = int(FLAGS.device.split(":", 1)[1]) if ":" in FLAGS.device else 0
    if index >= jax.device_count():
        raise SampleError(f"--device={FLAGS.device} but JAX finds {jax.device_count()} GPU(s)")


def run(prompt: str) -> None:
    import jax

    from nanoloop_jax.ckpt import loading
    from nanoloop_jax.data.tokenizer import model_tokenizer
    from nanoloop_jax.decode.sampling import KVDecoder, SampleConfig

    loaded = loading.load_model(FLAGS.out_dir, FLAGS.ckpt)
    config, params = loaded.model_config, loaded.params
    if FLAGS.dtype is not None:
        config = dataclasses.replace(config, dtype=FLAGS.dtype)
    tokenizer = model_tokenizer(FLAGS.data_dir or loaded.data_dir, config.vocab_size)
    if tokenizer.vocab_size > config.vocab_size:
        raise SampleError(
            f"the {tokenizer.name} tokenizer has {tokenizer.vocab_size} tokens but the model only "
            f"{config.vocab_size}; pass the model's dataset with --data_dir"
        )
    top_k = effective_top_k(tokenizer.vocab_size)
    dc = decode_config(config.n_loop)
    prompt_ids = encode_prompt(tokenizer, prompt)
    # only now, so that a bad input leaves exactly one line on stderr
    print(f"loaded {loaded.description}; tokenizer: {tokenizer.name} ({tokenizer.vocab_size} tokens)", file=sys.stderr)
    sc = SampleConfig(FLAGS.temperature, top_k, FLAGS.top_p, vocab_limit=tokenizer.vocab_size)
    decoder = KVDecoder(config, sc, dc, chunk_size=CHUNK, window=FLAGS.window)
    gen, seconds = write_samples(
        decoder,
        params,
        tokenizer,
        prompt_ids,
        num_samples=FLAGS.num_samples,
        max_new_tokens=FLAGS.max_new_tokens,
        key=jax.random.PRNGKey(FLAGS.seed),
        exit_threshold=FLAGS.exit_threshold,
        out=sys.stdout,
    )
    if decoder.dc.exit_criterion != "none":
        print(f"mean loop iterations per token: {gen.iters_BxN.mean():.2f} of n_loop {decoder.n_loop}")
    if FLAGS.stats:
        print(format_stats(gen, seconds, decoder.cache_bytes(FLAGS.num_samples)))
        if decoder.dc.draft_n_loop:
            st = decoder.stats
            print(f"speculative: {st['rounds']} rounds, {st['accepted']} of {st['drafted']} drafted tokens accepted")


def format_stats(gen, seconds: float, kv_bytes: int) -> str:
    """The --stats line: tokens/s (all samples' tokens over the decoding seconds, compile time left out),
    iterations per token, cache MiB."""
    it = gen.iters_BxN
    rate = gen.tokens_BxN.size / seconds
    return (
        f"stats: tokens/s {rate:,.1f}, iterations/token mean {it.mean():.2f} min {it.min()} max {it.max()}, "
        f"kv cache {kv_bytes / 2**20:.2f} MiB"
    )


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        print(f"error: unexpected arguments {argv[1:]}; flags are --name=value", file=sys.stderr)
        return 1
    from nanoloop_jax import log

    log.quiet_libraries()  # orbax logs every file it reads at INFO
    try:
        check_flags()
        prompt = read_prompt(FLAGS.start)
    except SampleError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if FLAGS.device == "cpu":
        os.environ["JAX_PLATFORMS"] = "cpu"  # before JAX is first imported
    from nanoloop_jax import cpu_defaults

    cpu_defaults.apply_if_cpu()
    try:
        check_device()
        run(prompt)
    except UserError as err:  # anything else is a bug: its traceback stays
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    app.run(lambda argv: sys.exit(main(argv)))
