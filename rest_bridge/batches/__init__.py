"""OpenAI's Batch API on the bridge: the JSONL formats, the endpoints a line may target, the
file and batch objects, and the runner."""
