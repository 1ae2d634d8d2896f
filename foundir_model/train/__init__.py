"""foundir_model.train.loop: TODO."""
