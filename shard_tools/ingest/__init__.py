"""shard_tools.ingest.layouts: TODO."""
