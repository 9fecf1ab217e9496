"""The bytes tokenizer (`data.tokenizer: bytes`): a text's UTF-8 bytes are its ids (0-255), <|endoftext|> is 256.

nanoGPT's character-level recipes in gptray: on ASCII text a byte is a character, and any text
round-trips exactly (decoding invalid UTF-8 bytes alone, in a sample cut mid-character, replaces them).
"""

from __future__ import annotations

import hashlib

import numpy as np

BYTES_NAME = "bytes"
EOT = 256  # the id after every byte value
VOCAB_SIZE = 257


class BytesTokenizer:
    """Ids are the text's UTF-8 bytes; `encode_concatenated` puts <|endoftext|> after each document."""

    kind = "bytes"
    name = BYTES_NAME
    vocab_size = VOCAB_SIZE
    eot_token = EOT
    dtype = np.dtype(np.uint16)
    # what decides its ids: a change to this scheme would be a different tokenizer
    digest = hashlib.sha256(b"gptray bytes tokenizer: utf-8 bytes 0-255, <|endoftext|> 256").hexdigest()

    def encode(self, text: str) -> list[int]:
        return list(_utf8(text))

    def encode_documents(self, texts: list[str]) -> list[np.ndarray]:
        values, offsets = self.encode_concatenated(texts)
        return [values[offsets[i]:offsets[i + 1]] for i in range(len(texts))]

    def encode_concatenated(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Every document's bytes, each followed by <|endoftext|>, in one array, plus where each starts."""
        parts = [_utf8(text) for text in texts]
        offsets = np.zeros(len(parts) + 1, dtype=np.int64)
        np.cumsum([len(p) + 1 for p in parts], out=offsets[1:])
        values = np.frombuffer(b"".join(p + b"\0" for p in parts), dtype=np.uint8).astype(self.dtype)
        values[offsets[1:] - 1] = EOT
        return values, offsets

    def decode_bytes(self, tokens) -> bytes:
        """The bytes the ids stand for (<|endoftext|> as its text)."""
        return b"".join(bytes([t]) if t < EOT else b"<|endoftext|>" for t in (int(t) for t in tokens))

    def decode(self, tokens) -> str:
        return self.decode_bytes(tokens).decode("utf-8", errors="replace")

    def token_byte_lengths(self) -> np.ndarray:
        """Each byte id stands for one byte, <|endoftext|> for none (bits per byte)."""
        lengths = np.ones(VOCAB_SIZE, dtype=np.int32)
        lengths[EOT] = 0
        return lengths

    def describe(self) -> dict:
        return {"name": self.name, "kind": self.kind, "digest": self.digest, "vocab_size": self.vocab_size,
                "eot_token": self.eot_token, "dtype": str(self.dtype)}


def _utf8(text: str) -> bytes:
    # surrogatepass: a document's text holds lone surrogates only where its bytes did, so they go back
    return text.encode("utf-8", "surrogatepass")
