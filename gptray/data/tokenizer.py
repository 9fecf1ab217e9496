"""tiktoken encodings that travel to Ray workers by value, plus the token dtype rule."""

from __future__ import annotations

import numpy as np
import tiktoken

from gptray.errors import ConfigError, DataError


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (GPT-2's 50,257 does), else uint32."""
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


class Tokenizer:
    """A tiktoken encoding with document helpers.

    It pickles its BPE ranks by value, so Ray workers on any node rebuild it without
    downloading or finding tiktoken's cache (only the driver needs TIKTOKEN_CACHE_DIR).
    """

    def __init__(self, name: str = "gpt2"):
        self.name = name
        try:
            self._encoding = tiktoken.get_encoding(name)
        except ValueError:
            raise ConfigError("data.tokenizer", f"unknown tiktoken encoding {name!r}") from None
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
        encoded = self._encoding.encode_ordinary_batch(texts, num_threads=1)
        documents = []
        for ids in encoded:
            tokens = np.empty(len(ids) + 1, dtype=self.dtype)
            tokens[:-1] = ids
            tokens[-1] = self.eot_token
            documents.append(tokens)
        return documents

    def decode(self, tokens) -> str:
        return self._encoding.decode([int(t) for t in tokens])

    def describe(self) -> dict:
        return {"name": self.name, "vocab_size": self.vocab_size, "eot_token": self.eot_token,
                "dtype": str(self.dtype)}

    def __getstate__(self) -> dict:
        enc = self._encoding
        return {
            "name": self.name,
            "encoding": {
                "name": enc.name,
                "pat_str": enc._pat_str,
                "mergeable_ranks": enc._mergeable_ranks,
                "special_tokens": enc._special_tokens,
            },
        }

    def __setstate__(self, state: dict) -> None:
        self.name = state["name"]
        self._encoding = tiktoken.Encoding(**state["encoding"])
