"""Using a trained model: chat, batched generation, classifier predictions, and the data check/preview a user runs
before training."""
