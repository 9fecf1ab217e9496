"""`ray job submit` entrypoints, one per job: `python -m pipelines.NAME_job` from the project root."""
