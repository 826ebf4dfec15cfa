"""Chat: the base-model catalog, the names of fine-tuned models, and chat completions (a
request the app stores and an inference worker answers)."""
