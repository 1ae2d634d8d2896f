"""shard_tools.inspect: TODO."""
