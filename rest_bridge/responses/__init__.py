"""OpenAI's Responses API on the bridge: request schema, conversation, output items and events,
and the flow that creates (and stores) a response."""
