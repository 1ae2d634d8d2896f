"""shard_tools.pack.packer: TODO."""
