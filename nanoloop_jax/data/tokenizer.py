"""Text <-> token ids: character-level from a dataset's meta.json, else GPT-2 BPE (tiktoken).

The same rule as nanoGPT's sample.py: a data dir whose meta has char tables (`stoi`/`itos`) is
character-level; anything else, including no meta at all, is GPT-2.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping

import tiktoken

from nanoloop_jax.data.batches import DataError, load_meta
from nanoloop_jax.errors import UserError

GPT2_EOT = 50256  # <|endoftext|>, the document separator that prepare.py appends
GPT2_VOCAB = 50257  # tokens of tiktoken's gpt2 encoding


@functools.cache
def gpt2_encoding() -> tiktoken.Encoding:
    """tiktoken's gpt2 encoding, with a one-line DataError if its files cannot be fetched."""
    try:
        return tiktoken.get_encoding("gpt2")
    except Exception as e:  # requests, urllib and hash errors all mean the same to the user
        reason = " ".join(str(e).split()) or type(e).__name__
        raise DataError(
            f"could not load tiktoken's gpt2 encoding ({reason}); it downloads once, so offline set "
            "TIKTOKEN_CACHE_DIR to an absolute path holding its cached files"
        ) from e


class Tokenizer:
    """encode/decode plus vocab_size and eot_token (None for character-level)."""

    def __init__(
        self,
        name: str,
        vocab_size: int,
        eot_token: int | None,
        stoi: Mapping[str, int] | None = None,
        encoding: tiktoken.Encoding | None = None,
    ) -> None:
        self.name = name  # "char" or "gpt2"
        self.vocab_size = vocab_size
        self.eot_token = eot_token
        self._stoi = dict(stoi) if stoi is not None else None
        self._itos = {i: ch for ch, i in self._stoi.items()} if self._stoi is not None else None
        self._encoding = encoding

    @classmethod
    def char(cls, stoi: Mapping[str, int]) -> Tokenizer:
        """A character-level tokenizer from a char -> id table."""
        return cls("char", len(stoi), None, stoi=stoi)

    @classmethod
    def gpt2(cls) -> Tokenizer:
        """GPT-2 BPE, 50,257 tokens."""
        enc = gpt2_encoding()
        return cls("gpt2", enc.n_vocab, enc.eot_token, encoding=enc)

    @property
    def stoi(self) -> dict[str, int] | None:
        """The character -> id table of a character-level tokenizer (a copy); None for GPT-2."""
        return None if self._stoi is None else dict(self._stoi)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; for GPT-2, a literal <|endoftext|> becomes the eot token."""
        if self._stoi is None:
            return self._encoding.encode(text, allowed_special={"<|endoftext|>"})
        unknown = [ch for ch in dict.fromkeys(text) if ch not in self._stoi]
        if unknown:
            # repr() keeps the message on one line even for '\t' or '\r'.
            listed = ", ".join(repr(ch) for ch in unknown)
            raise UserError(
                f"characters not in the model's vocabulary: {listed} "
                f"(the {self.vocab_size}-character vocabulary comes from the dataset's meta.json)"
            )
        return [self._stoi[ch] for ch in text]

    def decode(self, ids: list[int]) -> str:
        """The text of token ids; ids outside the vocabulary raise ValueError."""
        ids = [int(i) for i in ids]  # accepts numpy/jax integer arrays too
        bad = sorted({i for i in ids if not 0 <= i < self.vocab_size})
        if bad:
            # A model whose vocab is padded (50304 for GPT-2) can emit these unless sampling masks them.
            raise UserError(f"token ids outside the {self.vocab_size}-token vocabulary: {bad[:10]}")
        if self._itos is None:
            return self._encoding.decode(ids)
        return "".join(self._itos[i] for i in ids)


def load_tokenizer(data_dir_or_meta: str | os.PathLike | Mapping | None) -> Tokenizer:
    """The tokenizer for a data dir or an already-loaded meta dict; None or no meta.json means GPT-2."""
    if data_dir_or_meta is None or isinstance(data_dir_or_meta, Mapping):
        meta = data_dir_or_meta
    else:
        meta = load_meta(data_dir_or_meta)
    if meta is not None and "stoi" in meta:
        return Tokenizer.char(meta["stoi"])
    tokenizer = meta.get("tokenizer", "gpt2") if meta is not None else "gpt2"
    if tokenizer != "gpt2":
        raise DataError(f"meta.json names tokenizer {tokenizer!r}; only 'gpt2' and char-level are supported")
    return Tokenizer.gpt2()


def model_tokenizer(data_dir: str | os.PathLike | None, model_vocab: int) -> Tokenizer:
    """The tokenizer of a model: its dataset's meta.json, else GPT-2 BPE, which a model with fewer than
    GPT2_VOCAB tokens cannot have been trained on (then one line asks for the dataset, before tiktoken loads)."""
    meta = load_meta(data_dir) if data_dir else None
    if meta is None and model_vocab < GPT2_VOCAB:
        where = f"{data_dir} has no meta.json" if data_dir else "its checkpoint names no dataset"
        raise DataError(
            f"this model has {model_vocab} tokens (GPT-2 BPE has {GPT2_VOCAB}) and {where}; "
            "pass --data_dir=DIR, the directory of the dataset it was trained on (with its meta.json)"
        )
    return load_tokenizer(meta)
