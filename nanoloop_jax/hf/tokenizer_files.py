"""Tokenizer files of a Hugging Face export, so that AutoTokenizer.from_pretrained(DIR) gives our token ids.

Character-level runs (meta.json's stoi): a `tokenizers` WordLevel model over the single characters, a
pre-tokenizer that splits every character off (newlines and spaces included) and a Fuse decoder that joins
them back without spaces, so encode and decode round-trip any text of the vocabulary exactly.

GPT-2 BPE runs: GPT-2's own files, encoder.json (= vocab.json) and vocab.bpe (= merges.txt), read through
tiktoken's file cache (tiktoken.load.read_file_cached: TIKTOKEN_CACHE_DIR, its sha256 checks, the download
when online) plus a byte-level BPE tokenizer.json built from them.
"""

from __future__ import annotations

import json

from nanoloop_jax.data.batches import DataError
from nanoloop_jax.data.tokenizer import GPT2_EOT, Tokenizer
from nanoloop_jax.errors import UserError

# tiktoken_ext/openai_public.py gpt2(): the files tiktoken's gpt2 encoding is built from, and their sha256
GPT2_FILES = {
    "encoder.json": (
        "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json",
        "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
    ),
    "vocab.bpe": (
        "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe",
        "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
    ),
}
ENDOFTEXT = "<|endoftext|>"


def _tokenizers():
    try:
        import tokenizers
    except ImportError:
        raise UserError(
            "exporting to Hugging Face needs the tokenizers and safetensors packages: "
            "run it with `uv run --extra hf python -m nanoloop_jax.tools.export_hf ...`"
        ) from None
    return tokenizers


def _json(obj) -> bytes:
    return (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode()


def char_tokenizer_json(stoi: dict[str, int]) -> str:
    """tokenizer.json of a character-level vocabulary: one token per character, decoded by concatenation."""
    tk = _tokenizers()
    tokenizer = tk.Tokenizer(tk.models.WordLevel(vocab=dict(stoi), unk_token=None))
    tokenizer.pre_tokenizer = tk.pre_tokenizers.Split(tk.Regex(r"[\s\S]"), behavior="isolated")
    tokenizer.decoder = tk.decoders.Fuse()
    return tokenizer.to_str(pretty=True)


def gpt2_source_files() -> dict[str, bytes]:
    """encoder.json and vocab.bpe from tiktoken's cache (or its download when online); one line if neither works."""
    from tiktoken.load import read_file_cached

    out = {}
    for name, (url, sha256) in GPT2_FILES.items():
        try:
            out[name] = read_file_cached(url, sha256)
        except Exception as e:  # requests, urllib and hash errors all mean the same to the user
            reason = " ".join(str(e).split()) or type(e).__name__
            raise DataError(
                f"exporting a GPT-2 BPE model needs GPT-2's {name} from tiktoken's file cache, which could not be "
                f"read ({reason}); offline, set TIKTOKEN_CACHE_DIR to an absolute path holding tiktoken's cached "
                "gpt2 files"
            ) from e
    return out


def gpt2_tokenizer_json(vocab: dict[str, int], merges: list[str]) -> str:
    """tokenizer.json of GPT-2's byte-level BPE (no prefix space, <|endoftext|> special), as GPT2TokenizerFast."""
    tk = _tokenizers()
    pairs = [tuple(m.split(" ")) for m in merges]
    tokenizer = tk.Tokenizer(tk.models.BPE(vocab=vocab, merges=pairs, unk_token=None, fuse_unk=False))
    tokenizer.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = tk.decoders.ByteLevel()
    tokenizer.post_processor = tk.processors.ByteLevel(trim_offsets=False)
    tokenizer.add_special_tokens([tk.AddedToken(ENDOFTEXT, special=True, normalized=False)])
    return tokenizer.to_str(pretty=True)


def tokenizer_files(tokenizer: Tokenizer, model_max_length: int) -> dict[str, bytes]:
    """File name -> contents of the tokenizer files for a char-level or GPT-2 tokenizer."""
    config = {"model_max_length": model_max_length, "clean_up_tokenization_spaces": False}
    if tokenizer.name == "char":
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
        return {
            "tokenizer.json": char_tokenizer_json(tokenizer.stoi).encode(),
            "tokenizer_config.json": _json(config),
        }
    src = gpt2_source_files()
    vocab = json.loads(src["encoder.json"])
    if vocab.get(ENDOFTEXT) != GPT2_EOT:
        raise DataError(f"GPT-2's encoder.json maps {ENDOFTEXT} to {vocab.get(ENDOFTEXT)}, not {GPT2_EOT}")
    # vocab.bpe: a '#version' line, then one merge per line (exactly merges.txt)
    merges = [line for line in src["vocab.bpe"].decode().split("\n")[1:] if line]
    specials = {"bos_token": ENDOFTEXT, "eos_token": ENDOFTEXT, "unk_token": ENDOFTEXT}
    config.update(specials, tokenizer_class="GPT2Tokenizer", add_prefix_space=False)
    return {
        "vocab.json": src["encoder.json"],
        "merges.txt": src["vocab.bpe"],
        "tokenizer.json": gpt2_tokenizer_json(vocab, merges).encode(),
        "tokenizer_config.json": _json(config),
        "special_tokens_map.json": _json(specials),
    }
