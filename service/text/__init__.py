"""Text handling: prompts rendered through chat templates and encoded, and each token's text."""
