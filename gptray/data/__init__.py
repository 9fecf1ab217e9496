"""Corpora → tokens: readers, the tokenize job (Ray tasks that write their own shards), Parquet shards, manifest,
training windows."""
