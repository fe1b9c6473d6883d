"""One fit, one step: the hook table, the fit session and the training step variants."""
