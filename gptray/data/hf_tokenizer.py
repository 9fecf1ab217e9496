"""Hugging Face `tokenizers` tokenizers (a tokenizer.json, or hf:NAME from the Hub), as the tiktoken kind."""

from __future__ import annotations

import hashlib
import json

import numpy as np
from tokenizers import Tokenizer

from gptray.core.errors import ConfigError, DataError, StorageError
from gptray.core.storage import read_bytes, resolve
from gptray.data.tiktoken_tokenizer import token_dtype

END_OF_TEXT = "<|endoftext|>"
# What a Hub tokenizer without <|endoftext|> calls the token that ends a document, in the order tried.
END_OF_TEXT_ALIASES = (END_OF_TEXT, "</s>", "<|end_of_text|>", "<eos>", "<|eos|>")

# Tokenizers already built in this process, by digest: each Ray task unpickles its tokenizer by value.
_BUILT: dict = {}


def byte_level_alphabet() -> dict[str, int]:
    """GPT-2's byte-to-character table, inverted: byte-level BPE writes byte b as a printable character
    (printable ASCII and Latin-1 as themselves, the rest shifted past 255), so every token's string
    spells its bytes exactly."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, shifted = {}, 0
    for byte in range(256):
        if byte in printable:
            table[chr(byte)] = byte
        else:
            table[chr(256 + shifted)] = byte
            shifted += 1
    return table


class HuggingFaceTokenizer:
    """A `tokenizers.Tokenizer` with document helpers. It pickles as its JSON, so Ray workers rebuild it
    without the file or the Hub. Special-token strings inside a document are encoded as plain text, as
    the tiktoken kind does: only the tokenize job puts <|endoftext|> between documents."""

    kind = "huggingface"

    def __init__(self, json_text: str, name: str):
        self.name = name  # the data.tokenizer spec it came from: a path or hf:NAME
        self._json = json_text
        self._digest = hashlib.sha256(json_text.encode()).hexdigest()
        self._tokenizer = _build(json_text, self._digest)
        self._eot = _end_of_text(self._tokenizer, name)
        self._byte_lengths: np.ndarray | None = None

    @classmethod
    def from_file(cls, path: str, name: str | None = None) -> HuggingFaceTokenizer:
        try:
            text = read_bytes(*resolve(path), name=path).decode("utf-8")
        except (StorageError, UnicodeDecodeError) as exc:
            raise DataError(f"could not read the tokenizer file data.tokenizer={path}: {exc}") from exc
        return cls(text, name or path)

    @classmethod
    def from_hub(cls, spec: str) -> HuggingFaceTokenizer:
        """hf:NAME or hf:NAME@REVISION: the repository's tokenizer.json (Hugging Face's cache; offline with
        HF_HUB_OFFLINE=1)."""
        from huggingface_hub import hf_hub_download

        repo, _, revision = spec[len("hf:"):].partition("@")
        try:
            path = hf_hub_download(repo, "tokenizer.json", revision=revision or None)
        except Exception as exc:  # network, a missing repository or file, an offline cache miss
            raise DataError(f"could not fetch tokenizer.json of {repo!r} from the Hugging Face Hub "
                            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). Without "
                            "internet, set HF_HUB_OFFLINE=1 with the file in Hugging Face's cache, or point "
                            "data.tokenizer at a tokenizer.json") from exc
        with open(path, encoding="utf-8") as f:
            return cls(f.read(), spec)

    @property
    def vocab_size(self) -> int:
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    @property
    def eot_token(self) -> int:
        return self._eot

    @property
    def dtype(self) -> np.dtype:
        return token_dtype(self.vocab_size)

    @property
    def digest(self) -> str:
        """sha256 of the tokenizer.json: its vocabulary, merges, normalizer and special tokens."""
        return self._digest

    def to_json(self) -> str:
        return self._json

    def encode(self, text: str) -> list[int]:
        return self._tokenizer.encode(text, add_special_tokens=False).ids

    def encode_documents(self, texts: list[str]) -> list[np.ndarray]:
        values, offsets = self.encode_concatenated(texts)
        return [values[offsets[i]:offsets[i + 1]] for i in range(len(texts))]

    def encode_concatenated(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """All documents' tokens, each followed by the end-of-text token, plus where each starts."""
        encodings = self._tokenizer.encode_batch_fast(texts, add_special_tokens=False)
        lengths = np.fromiter((len(e.ids) + 1 for e in encodings), dtype=np.int64, count=len(encodings))
        offsets = np.zeros(len(encodings) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        values = np.empty(int(offsets[-1]), dtype=self.dtype)
        for encoding, end in zip(encodings, offsets[1:]):
            values[end - 1 - len(encoding.ids):end - 1] = encoding.ids
        values[offsets[1:] - 1] = self._eot
        return values, offsets

    def decode(self, tokens) -> str:
        return self._tokenizer.decode([int(t) for t in tokens], skip_special_tokens=False)

    def token_byte_lengths(self) -> np.ndarray:
        """UTF-8 bytes each id stands for (special tokens: 0). Exact for byte-level BPE; otherwise the
        length of the id decoded alone (a token holding part of a character counts its replacement)."""
        if self._byte_lengths is None:
            tok = self._tokenizer
            added = tok.get_added_tokens_decoder()
            byte_level = "ByteLevel" in json.dumps(json.loads(self._json).get("decoder"))
            alphabet = byte_level_alphabet()
            lengths = np.zeros(self.vocab_size, dtype=np.int32)
            for i in range(self.vocab_size):
                if i in added:
                    lengths[i] = 0 if added[i].special else len(added[i].content.encode("utf-8"))
                    continue
                piece = tok.id_to_token(i)
                if piece is None:
                    continue
                if byte_level and all(c in alphabet for c in piece):
                    lengths[i] = len(piece)
                else:
                    lengths[i] = len(tok.decode([i], skip_special_tokens=False).encode("utf-8"))
            self._byte_lengths = lengths
        return self._byte_lengths

    def describe(self) -> dict:
        return {"name": self.name, "kind": self.kind, "digest": self.digest, "vocab_size": self.vocab_size,
                "eot_token": self.eot_token, "dtype": str(self.dtype)}

    def __getstate__(self) -> dict:
        return {"name": self.name, "json": self._json}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["json"], state["name"])


def _build(json_text: str, digest: str):
    if digest not in _BUILT:
        try:
            tokenizer = Tokenizer.from_str(json_text)
        except Exception as exc:
            raise DataError(f"not a Hugging Face tokenizer.json ({type(exc).__name__}: {exc})") from exc
        tokenizer.encode_special_tokens = True  # "<|endoftext|>" typed in a document is text, not a boundary
        _BUILT[digest] = tokenizer
    return _BUILT[digest]


def _end_of_text(tokenizer, name: str) -> int:
    for token in END_OF_TEXT_ALIASES:
        index = tokenizer.token_to_id(token)
        if index is not None:
            return index
    raise ConfigError("data.tokenizer", f"the tokenizer {name} has no end-of-text token (none of "
                                        f"{', '.join(END_OF_TEXT_ALIASES)}): documents need one between them")
