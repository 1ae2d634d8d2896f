"""shard_tools.publish: TODO."""
