/* The playground: one prompt to a job's fine-tuned model and to its base model, both answers
   streamed side by side from /v1/chat/completions (OpenAI's server-sent chunks, then
   "data: [DONE]"). The browser's session authenticates; the CSRF token goes in a header. */
"use strict";

(() => {
  const form = document.getElementById("playground-form");
  if (!form) return;
  const { el } = tl;
  const data = tl.pageData();
  const select = document.getElementById("playground-job");
  const send = document.getElementById("playground-send");
  const stop = document.getElementById("playground-stop");
  const sides = ["fine-tuned", "base"].map((name) => ({
    model: document.getElementById(`model-${name}`),
    answer: document.getElementById(`answer-${name}`),
    usage: document.getElementById(`usage-${name}`),
  }));
  let running = null;

  select.replaceChildren(...data.jobs.map((job) => el("option", {
    value: job.id, text: `#${job.id} ${job.name}${job.checkpoint ? ` (${job.state}: its last checkpoint)` : ""}`,
  })));
  if (data.chosen) select.value = data.chosen;
  const chosenJob = () => data.jobs.find((job) => String(job.id) === select.value);
  function showModels() {
    const job = chosenJob();
    sides[0].model.textContent = job.model;
    sides[1].model.textContent = job.base_model;
  }
  select.addEventListener("change", showModels);
  showModels();

  /** Each complete server-sent event's data, as text. */
  async function* events(response) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += decoder.decode(value, { stream: true });
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const lines = buffer.slice(0, end).split("\n");
        buffer = buffer.slice(end + 2);
        const payload = lines.filter((line) => line.startsWith("data: ")).map((line) => line.slice(6)).join("\n");
        if (payload) yield payload;
      }
    }
  }

  async function ask(side, model, body, signal) {
    side.answer.textContent = "";
    side.answer.classList.remove("error");
    side.usage.textContent = "Waiting for a worker…";
    try {
      const response = await fetch("/v1/chat/completions", {
        method: "POST", credentials: "same-origin", signal,
        headers: { ...tl.headers(), "Content-Type": "application/json", Accept: "text/event-stream" },
        body: JSON.stringify({ ...body, model, stream: true, stream_options: { include_usage: true } }),
      });
      if (!response.ok) throw new Error(tl.errorText(await response.json().catch(() => null)));
      side.usage.textContent = "Answering…";
      for await (const payload of events(response)) {
        if (payload === "[DONE]") break;
        const chunk = JSON.parse(payload);
        if (chunk.error) throw new Error(chunk.error.message);
        for (const choice of chunk.choices) if (choice.delta.content) side.answer.textContent += choice.delta.content;
        if (chunk.usage) side.usage.textContent = `${chunk.usage.prompt_tokens} prompt + ${chunk.usage.completion_tokens} completion tokens`;
      }
    } catch (error) {
      side.usage.textContent = "";
      if (error.name === "AbortError") return;
      side.answer.classList.add("error");
      side.answer.textContent = error.message;
    }
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const fields = new FormData(form);
    const job = chosenJob();
    const messages = [];
    if (fields.get("system").trim()) messages.push({ role: "system", content: fields.get("system") });
    messages.push({ role: "user", content: fields.get("prompt") });
    const body = { messages, temperature: Number(fields.get("temperature")), max_tokens: Number(fields.get("max_tokens")) };
    running = new AbortController();
    send.disabled = true;
    stop.hidden = false;
    await Promise.all([ask(sides[0], job.model, body, running.signal), ask(sides[1], job.base_model, body, running.signal)]);
    send.disabled = false;
    stop.hidden = true;
  });
  stop.addEventListener("click", () => running && running.abort());
})();
