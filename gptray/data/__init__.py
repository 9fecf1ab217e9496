"""Corpora → tokens: readers, the Ray Data tokenize job, Parquet shards, manifest, training windows."""
