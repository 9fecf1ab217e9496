"""Corpora → tokens: readers, the tokenize job (on Ray Data: read tasks that write their own shards), Parquet shards,
manifest, training windows."""
