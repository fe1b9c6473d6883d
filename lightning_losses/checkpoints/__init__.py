"""What a checkpoint carries besides the weights: hyperparameters as plain values, and the
library's own state (windows, classification, routes)."""
