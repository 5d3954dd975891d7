"""The function-calling job: tool specs, call generation, the calls' checks, their training data and evaluation."""
