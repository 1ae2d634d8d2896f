"""foundir_data.remote: TODO."""
