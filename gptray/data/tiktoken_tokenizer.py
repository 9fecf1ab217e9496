"""tiktoken encodings that travel to Ray workers by value, plus the token dtype rule (every tokenizer kind's)."""

from __future__ import annotations

import hashlib
import os

import numpy as np
import tiktoken

from gptray.core.errors import ConfigError, DataError


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (GPT-2's 50,257 does), else uint32."""
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


# Encodings already built in this process, by content digest. Each Ray task unpickles its
# tokenizer, and building tiktoken's BPE from the ranks costs ~35 ms: a worker builds it once.
_BUILT: dict[str, tiktoken.Encoding] = {}


def _encoding_digest(encoding: tiktoken.Encoding) -> str:
    """Identity of an encoding's content (regex, merges, special tokens), not just its name."""
    digest = hashlib.sha256(encoding._pat_str.encode())
    for token, rank in encoding._mergeable_ranks.items():
        digest.update(b"%d:%d:" % (rank, len(token)) + token)
    for token, rank in sorted(encoding._special_tokens.items()):
        digest.update(f"{token}={rank};".encode())
    return digest.hexdigest()


class TiktokenTokenizer:
    """A tiktoken encoding with document helpers.

    It pickles its BPE ranks by value, so Ray workers on any node rebuild it without
    downloading or finding tiktoken's cache (only the driver needs TIKTOKEN_CACHE_DIR).
    """

    kind = "tiktoken"

    def __init__(self, name: str = "gpt2"):
        self.name = name
        self._digest = None
        self._token_bytes = None
        try:
            self._encoding = tiktoken.get_encoding(name)
        except ValueError:
            hint = f"; for the tokenizer file or directory {name!r} here, write ./{name}" if os.path.exists(name) \
                else ""
            raise ConfigError("data.tokenizer", f"unknown tiktoken encoding {name!r}{hint}") from None
        except Exception as exc:  # tiktoken fetches its files over HTTP on first use
            raise DataError(
                f"could not load tiktoken encoding {name!r} ({type(exc).__name__}: {exc}). Without internet, "
                "set TIKTOKEN_CACHE_DIR to a directory holding tiktoken's cached files."
            ) from exc

    @property
    def vocab_size(self) -> int:
        return self._encoding.n_vocab

    @property
    def eot_token(self) -> int:
        return self._encoding.eot_token

    @property
    def dtype(self) -> np.dtype:
        return token_dtype(self.vocab_size)

    def encode(self, text: str) -> list[int]:
        """Encode plain text; special-token strings in it are treated as ordinary text."""
        return self._encoding.encode_ordinary(text)

    def encode_documents(self, texts: list[str]) -> list[np.ndarray]:
        """Each document's tokens followed by <|endoftext|>, as arrays of `self.dtype`."""
        values, offsets = self.encode_concatenated(texts)
        return [values[offsets[i]:offsets[i + 1]] for i in range(len(texts))]

    def encode_concatenated(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """All documents' tokens, each followed by <|endoftext|>, in one array, plus the offsets
        (len(texts) + 1 of them) where each document starts: the layout of an Arrow list column."""
        encoding = self._encoding
        # With no special token allowed, encode_to_numpy equals encode_ordinary ("<|endoftext|>" in a
        # document is plain text) and skips building a Python list per document.
        parts = [encoding.encode_to_numpy(text, allowed_special=set(), disallowed_special=()) for text in texts]
        lengths = np.fromiter((len(p) + 1 for p in parts), dtype=np.int64, count=len(parts))
        offsets = np.zeros(len(parts) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        values = np.empty(int(offsets[-1]), dtype=self.dtype)
        for part, end in zip(parts, offsets[1:]):
            values[end - 1 - len(part):end - 1] = part
        values[offsets[1:] - 1] = self.eot_token
        return values, offsets

    def decode(self, tokens) -> str:
        return self._encoding.decode([int(t) for t in tokens])

    def token_byte_lengths(self) -> np.ndarray:
        """int32 (vocab_size,): how many UTF-8 bytes of text each token id stands for; 0 for special tokens
        (<|endoftext|> is no text) and for ids the encoding leaves unused. What bits per byte counts."""
        if self._token_bytes is None:
            encoding = self._encoding
            special = set(encoding._special_tokens.values())
            lengths = np.zeros(self.vocab_size, dtype=np.int32)
            for i in range(self.vocab_size):
                if i not in special:
                    try:
                        lengths[i] = len(encoding.decode_single_token_bytes(i))
                    except KeyError:  # a gap in the ids (cl100k_base has some below its special tokens)
                        pass
            self._token_bytes = lengths
        return self._token_bytes

    @property
    def digest(self) -> str:
        """sha256 of the encoding's content: a changed vocabulary under the same name is a different tokenizer."""
        if self._digest is None:
            self._digest = _encoding_digest(self._encoding)
        return self._digest

    def describe(self) -> dict:
        # no "kind": a manifest without one is tiktoken's, so datasets written before there were kinds
        # keep their request digest and fingerprint
        return {"name": self.name, "vocab_size": self.vocab_size, "eot_token": self.eot_token,
                "dtype": str(self.dtype)}

    def __getstate__(self) -> dict:
        enc = self._encoding
        return {
            "name": self.name,
            "digest": self.digest,
            "encoding": {
                "name": enc.name,
                "pat_str": enc._pat_str,
                "mergeable_ranks": enc._mergeable_ranks,
                "special_tokens": enc._special_tokens,
            },
        }

    def __setstate__(self, state: dict) -> None:
        self.name = state["name"]
        self._digest = state["digest"]
        self._token_bytes = None
        if self._digest not in _BUILT:
            _BUILT[self._digest] = tiktoken.Encoding(**state["encoding"])
        self._encoding = _BUILT[self._digest]
