"""Token files (nanoGPT's raw ids, llm.c's headed shards): their layouts are checked, their ids split into documents."""

from __future__ import annotations

import numpy as np
import pyarrow.fs as pafs
import pytest

from gptray.config import SourceConfig
from gptray.core.errors import ConfigError, DataError
from gptray.data.sources import resolve_sources
from gptray.data.token_files import LLMC_MAGIC, read_layout, token_documents

FS = pafs.LocalFileSystem()
EOT = 50256
GPT2_VOCAB = 50257


def llmc_bytes(ids, magic=LLMC_MAGIC, version=1, count=None) -> bytes:
    header = np.zeros(256, dtype="<i4")
    header[:3] = magic, version, len(ids) if count is None else count
    return header.tobytes() + np.asarray(ids, dtype="<u2").tobytes()


def test_llmc_layout_is_read_and_damaged_headers_are_refused_naming_the_file(tmp_path):
    good = tmp_path / "fineweb_train_000001.bin"
    good.write_bytes(llmc_bytes([EOT, 1, 2, 3]))
    layout = read_layout(FS, str(good), "good.bin", "llmc", GPT2_VOCAB)
    assert (layout.offset, layout.count, layout.dtype) == (1024, 4, "<u2")
    damaged = {
        "magic.bin": (llmc_bytes([EOT, 1], magic=20240521), "magic 20240521"),
        "version.bin": (llmc_bytes([EOT, 1], version=2), "version 2"),
        "count.bin": (llmc_bytes([EOT, 1], count=3), "counts 3 tokens"),
        "truncated.bin": (llmc_bytes([EOT, 1, 2])[:-1], "counts 3 tokens"),
        "short.bin": (b"\0" * 100, "shorter than an llm.c header"),
    }
    for name, (data, why) in damaged.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(DataError, match=why) as caught:
            read_layout(FS, str(tmp_path / name), name, "llmc", GPT2_VOCAB)
        assert name in str(caught.value)


def test_nanogpt_width_follows_the_vocabulary_and_a_partial_id_is_refused(tmp_path):
    path = tmp_path / "train.bin"
    path.write_bytes(np.arange(6, dtype="<u2").tobytes())  # 12 bytes: 6 uint16 ids or 3 uint32 ids
    assert read_layout(FS, str(path), "train.bin", "nanogpt", GPT2_VOCAB).count == 6
    wide = read_layout(FS, str(path), "train.bin", "nanogpt", 100277)  # cl100k_base needs 32 bits
    assert (wide.dtype, wide.count) == ("<u4", 3)
    path.write_bytes(b"\0" * 7)
    with pytest.raises(DataError, match="train.bin: 7 bytes is not a whole number"):
        read_layout(FS, str(path), "train.bin", "nanogpt", GPT2_VOCAB)


def test_documents_split_at_eot_and_each_range_reads_the_documents_that_begin_in_it(tmp_path):
    # nanoGPT puts <|endoftext|> after each document; the last one here has none.
    ids = [1, 2, EOT, 3, EOT, EOT, 4, 5, 6, EOT, 7]
    path = tmp_path / "val.bin"
    path.write_bytes(np.asarray(ids, dtype="<u2").tobytes())
    layout = read_layout(FS, str(path), "val.bin", "nanogpt", GPT2_VOCAB)
    whole = [d.tolist() for d in token_documents(FS, str(path), "val.bin", layout, 0, len(ids), EOT, GPT2_VOCAB)]
    assert whole == [[1, 2], [3], [4, 5, 6], [7]]
    for cut in range(len(ids) + 1):  # any cut: the two ranges together read every document once
        parts = [d.tolist() for a, b in ((0, cut), (cut, len(ids)))
                 for d in token_documents(FS, str(path), "val.bin", layout, a, b, EOT, GPT2_VOCAB)]
        assert parts == whole, cut


def test_an_id_outside_the_vocabulary_is_refused_with_file_and_offset(tmp_path):
    path = tmp_path / "shard.bin"
    path.write_bytes(llmc_bytes([EOT, 1, 2, EOT, 60000, 3]))
    layout = read_layout(FS, str(path), "shard.bin", "llmc", GPT2_VOCAB)
    with pytest.raises(DataError, match=r"shard.bin: token id 60000 at token 4 \(byte 1,032\)"):
        list(token_documents(FS, str(path), "shard.bin", layout, 0, 6, EOT, GPT2_VOCAB))


def test_sources_check_every_header_before_any_work_and_token_settings_are_validated(tmp_path):
    (tmp_path / "a.bin").write_bytes(llmc_bytes([EOT, 1]))
    (tmp_path / "b.bin").write_bytes(llmc_bytes([EOT, 1], magic=7))
    (tmp_path / "notes.txt").write_text("not a token file")
    with pytest.raises(DataError, match="b.bin: not an llm.c token shard"):
        resolve_sources([SourceConfig(path=str(tmp_path), format="llmc")], GPT2_VOCAB)
    (tmp_path / "b.bin").unlink()
    source, = resolve_sources([SourceConfig(path=str(tmp_path), format="llmc")], GPT2_VOCAB)
    assert source.file_names == [str(tmp_path / "a.bin")]  # a directory's .bin files only
    with pytest.raises(ConfigError, match=r"data.val_sources\[0\].text_unit"):
        SourceConfig(path="x.bin", format="nanogpt", text_unit="line").validate(0, "data.val_sources")
    with pytest.raises(ConfigError, match=r"data.sources\[1\].format"):
        SourceConfig(corpus="tinyshakespeare", format="llmc").validate(1)
