"""foundir_data.read: TODO."""
