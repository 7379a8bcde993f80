"""Batch translation: the translate job and its pipeline (stages, feed workers, tiles, the
instance-norm statistics of tiled pictures), the ledger of done outputs, and planned runs
(shards) for the nightly DAG."""
