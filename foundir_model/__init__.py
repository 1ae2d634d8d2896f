"""foundir_model: the residual-diffusion generalist, specialists, training and evaluation."""
