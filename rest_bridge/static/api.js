// The bridge's OpenAI API as the playground uses it: the model list, and chat completions
// streamed as Server-Sent Events. Errors carry the message of the API's error envelope.

export class ApiError extends Error {
  constructor(message, status) {
    super(message);
    this.name = "ApiError";
    this.status = status;
  }
}

function headers(apiKey) {
  const result = { "Content-Type": "application/json" };
  if (apiKey) result.Authorization = `Bearer ${apiKey}`;
  return result;
}

async function errorOf(response) {
  let message = `${response.status} ${response.statusText}`;
  try {
    const body = await response.json();
    if (body?.error?.message) message = body.error.message;
  } catch {
    // Not the API's envelope (a proxy's page, say): the status line says what happened.
  }
  return new ApiError(message, response.status);
}

/** The served models: [{id, kind, ...}]. */
export async function listModels(apiKey) {
  const response = await fetch("/v1/models", { headers: headers(apiKey) });
  if (!response.ok) throw await errorOf(response);
  return (await response.json()).data;
}

/**
 * POST /v1/chat/completions with `body`, streamed with its usage chunk; calls onChunk(chunk)
 * for every chunk and resolves at `[DONE]`. Aborting `signal` closes the connection, which
 * cancels the generation on the server (the fetch then rejects with an AbortError).
 */
export async function streamChat(body, { apiKey, signal, onChunk }) {
  const response = await fetch("/v1/chat/completions", {
    method: "POST",
    headers: headers(apiKey),
    body: JSON.stringify({ ...body, stream: true, stream_options: { include_usage: true } }),
    signal,
  });
  if (!response.ok) throw await errorOf(response);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffered = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) throw new ApiError("The connection closed before the reply was complete.", response.status);
    buffered += value;
    let end;
    while ((end = buffered.indexOf("\n\n")) >= 0) {
      const event = buffered.slice(0, end);
      buffered = buffered.slice(end + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const data = line.slice("data: ".length);
        if (data === "[DONE]") return;
        const chunk = JSON.parse(data);
        // A failure after the stream started comes as one event holding the envelope.
        if (chunk.error) throw new ApiError(chunk.error.message, response.status);
        onChunk(chunk);
      }
    }
  }
}
