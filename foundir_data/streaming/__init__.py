"""foundir_data.streaming: TODO."""
