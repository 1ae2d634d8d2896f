"""foundir_model.release.files: TODO."""
