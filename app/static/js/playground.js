/* The playground. For a chat job: a conversation with its fine-tuned model and with its base
   model side by side. Each column keeps its own history (in this page only); every turn sends
   that whole history to /v1/chat/completions, streamed as OpenAI's server-sent chunks, with
   `fit_context` so that a conversation longer than the model reads loses its oldest turns
   (the answer's usage says how many; the page says so and forgets them). For a classifier job:
   a text and the probability of each label, from /api/jobs/{id}/classify. For a tagger (NER),
   question answering or seq2seq job: the sentence with its entities marked, the answer marked in
   its context with its score, or the generated target, from /api/jobs/{id}/predict.
   The browser's session authenticates; the CSRF token goes in a header. */
"use strict";

(() => {
  const form = document.getElementById("playground-form");
  if (!form) return;
  const { el } = tl;
  const data = tl.pageData();
  const select = document.getElementById("playground-job");
  const chatPanel = document.getElementById("chat-panel");
  const chatForm = document.getElementById("chat-form");
  const prompt = document.getElementById("playground-prompt");
  const send = document.getElementById("playground-send");
  const stop = document.getElementById("playground-stop");
  const turns = document.getElementById("playground-turns");
  const classifyPanel = document.getElementById("classify-panel");
  const sides = ["fine-tuned", "base"].map((name) => ({
    name,
    model: document.getElementById(`model-${name}`),
    log: document.getElementById(`log-${name}`),
    usage: document.getElementById(`usage-${name}`),
    history: [], // {message: {role, content}, node}: what the next turn sends, oldest first
  }));
  let running = null;
  let turnCount = 0;

  // A tagger's, question answerer's or encoder-decoder's job (its dataset's format): what it is called,
  // what its panel is headed, and its button.
  const TASK_NAMES = { token_classification: "NER", question_answering: "question answering", seq2seq: "seq2seq" };
  const TASK_ACTIONS = { token_classification: "Find the entities", question_answering: "Answer from a context", seq2seq: "Write the target" };
  const TASK_BUTTONS = { token_classification: "Tag", question_answering: "Answer", seq2seq: "Generate" };

  select.replaceChildren(...data.jobs.map((job) => el("option", {
    value: job.id,
    text: `#${job.id} ${job.name}${job.classifier ? " (classifier)" : job.task ? ` (${TASK_NAMES[job.task]})` : ""}${job.checkpoint ? ` (${job.state}: its last checkpoint)` : ""}`,
  })));
  if (data.chosen) select.value = data.chosen;
  const chosenJob = () => data.jobs.find((job) => String(job.id) === select.value);

  // ---- the conversation ----

  function newConversation() {
    if (running) running.abort();
    for (const side of sides) {
      side.history = [];
      side.log.replaceChildren();
      side.usage.textContent = "";
    }
    turnCount = 0;
    turns.textContent = "";
  }

  function bubble(side, role, content) {
    const node = el("div", { class: `bubble ${role}` }, el("span", { class: "role", text: role }), el("span", { class: "content", text: content }));
    side.log.append(node);
    side.log.scrollTop = side.log.scrollHeight;
    return node;
  }

  /** The worker left out the oldest `count` messages to fit the model's context: say so, and
      forget them (they would be left out of every later turn too). */
  function forgetOldest(side, count) {
    for (const entry of side.history.splice(0, count)) entry.node.classList.add("dropped");
    side.log.append(el("p", {
      class: "notice",
      text: `The conversation no longer fits in the model's context: its oldest ${count} messages were left out.`,
    }));
  }

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

  /** One turn on one side: the user's message is in its history already. */
  async function ask(side, model, system, sampling, signal) {
    const messages = [...(system ? [{ role: "system", content: system }] : []), ...side.history.map((entry) => entry.message)];
    const answer = bubble(side, "assistant", "");
    const text = answer.querySelector(".content");
    answer.classList.add("pending");
    side.usage.textContent = "Waiting for a worker…";
    try {
      const response = await fetch("/v1/chat/completions", {
        method: "POST", credentials: "same-origin", signal,
        headers: { ...tl.headers(), "Content-Type": "application/json", Accept: "text/event-stream" },
        body: JSON.stringify({ ...sampling, model, messages, fit_context: true, stream: true, stream_options: { include_usage: true } }),
      });
      if (!response.ok) throw new Error(tl.errorText(await response.json().catch(() => null)));
      side.usage.textContent = "Answering…";
      for await (const payload of events(response)) {
        if (payload === "[DONE]") break;
        const chunk = JSON.parse(payload);
        if (chunk.error) throw new Error(chunk.error.message);
        for (const choice of chunk.choices) if (choice.delta.content) text.textContent += choice.delta.content;
        side.log.scrollTop = side.log.scrollHeight;
        if (chunk.usage) {
          side.usage.textContent = `Last turn: ${chunk.usage.prompt_tokens} prompt + ${chunk.usage.completion_tokens} completion tokens`;
          if (chunk.usage.dropped_messages) forgetOldest(side, chunk.usage.dropped_messages);
        }
      }
      side.history.push({ message: { role: "assistant", content: text.textContent }, node: answer });
    } catch (error) {
      if (error.name === "AbortError" && text.textContent) {
        side.usage.textContent = "Stopped.";
        side.history.push({ message: { role: "assistant", content: text.textContent }, node: answer });
        return;
      }
      // No answer to keep: this turn's question goes too, so the next turn is not two questions in a row.
      const question = side.history.pop();
      if (question) question.node.classList.add("dropped");
      side.usage.textContent = "";
      if (error.name === "AbortError") answer.remove();
      else {
        answer.classList.add("error");
        text.textContent = error.message;
      }
    } finally {
      answer.classList.remove("pending");
    }
  }

  chatForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (running || !prompt.value.trim()) return;
    const fields = new FormData(form);
    const job = chosenJob();
    const content = prompt.value;
    const sampling = { temperature: Number(fields.get("temperature")), max_tokens: Number(fields.get("max_tokens")) };
    const system = fields.get("system").trim() ? fields.get("system") : null;
    for (const side of sides) side.history.push({ message: { role: "user", content }, node: bubble(side, "user", content) });
    prompt.value = "";
    turnCount += 1;
    turns.textContent = `${turnCount} turn${turnCount === 1 ? "" : "s"}`;
    running = new AbortController();
    send.disabled = true;
    stop.hidden = false;
    try {
      await Promise.all([
        ask(sides[0], job.model, system, sampling, running.signal),
        ask(sides[1], job.base_model, system, sampling, running.signal),
      ]);
    } finally {
      running = null;
      send.disabled = false;
      stop.hidden = true;
      prompt.focus();
    }
  });
  prompt.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      chatForm.requestSubmit();
    }
  });
  stop.addEventListener("click", () => running && running.abort());
  document.getElementById("playground-new").addEventListener("click", newConversation);

  // ---- a classifier's labels ----

  const classifyForm = document.getElementById("classify-form");
  const classifyButton = document.getElementById("classify-send");
  const result = document.getElementById("classify-result");

  function showLabels(answer) {
    const items = answer.labels.map((entry) => {
      const percent = entry.probability * 100;
      return el("li", { "data-label": entry.label },
        el("span", { class: "label", text: entry.label }),
        el("span", { class: "bar", role: "meter", "aria-valuemin": 0, "aria-valuemax": 100, "aria-valuenow": percent.toFixed(1), "aria-label": entry.label },
          el("span", { class: "bar-fill", style: `width: ${percent.toFixed(1)}%` })),
        el("span", { class: "probability", text: `${percent.toFixed(1)}%` }));
    });
    const note = answer.truncated
      ? `The text is longer than the model reads: only its first ${answer.tokens} tokens were labelled.`
      : `${answer.tokens} tokens`;
    result.replaceChildren(el("ul", { class: "labels" }, items), el("p", { class: answer.truncated ? "field-error" : "muted small", text: note }));
  }

  classifyForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    const job = chosenJob();
    classifyButton.disabled = true;
    classifyButton.textContent = "Classifying…";
    try {
      const response = await tl.api("POST", `/api/jobs/${job.id}/classify`, { text: document.getElementById("classify-text").value });
      if (response.ok) showLabels(response.data);
      else result.replaceChildren(el("p", { class: "field-error", text: tl.errorText(response.data) }));
    } catch (error) {
      result.replaceChildren(el("p", { class: "field-error", text: error.message }));
    } finally {
      classifyButton.disabled = false;
      classifyButton.textContent = "Classify";
    }
  });

  // ---- a tagger's entities, an answer in its context, a generated target ----

  const predictPanel = document.getElementById("predict-panel");
  const predictForm = document.getElementById("predict-form");
  const predictButton = document.getElementById("predict-send");
  const predictResult = document.getElementById("predict-result");
  const question = document.getElementById("predict-question");

  function showPrediction(answer, inputs) {
    if (answer.task === "token_classification") {
      const types = [...new Set(answer.entities.map((e) => e.type))];
      return predictResult.replaceChildren(tl.taggedTokens(answer.tokens, answer.tags),
        el("p", { class: "muted small", text: answer.entities.length ? `${answer.entities.length} entities: ${types.join(", ")}` : "no entity found" }));
    }
    if (answer.task === "question_answering") {
      const found = answer.answer !== "";
      return predictResult.replaceChildren(
        el("p", {}, el("strong", { text: found ? "Answer: " : "No answer in the context" }), found ? el("span", { class: "answer-text", text: answer.answer }) : null,
          el("span", { class: "muted small", text: ` · score ${(answer.score * 100).toFixed(1)}%` })),
        el("p", { class: "context" }, tl.markedSpan(inputs.context, found ? { start: answer.start, text: answer.answer } : null)));
    }
    predictResult.replaceChildren(el("p", {}, el("strong", { text: "Output: " }), el("span", { class: "generated", text: answer.target })));
  }

  predictForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    const job = chosenJob();
    const text = document.getElementById("predict-text").value;
    const inputs = job.task === "question_answering" ? { question: question.value, context: text } : { text };
    predictButton.disabled = true;
    try {
      const response = await tl.api("POST", `/api/jobs/${job.id}/predict`, inputs);
      if (response.ok) showPrediction(response.data, inputs);
      else predictResult.replaceChildren(el("p", { class: "field-error", text: tl.errorText(response.data) }));
    } catch (error) {
      predictResult.replaceChildren(el("p", { class: "field-error", text: error.message }));
    } finally {
      predictButton.disabled = false;
    }
  });

  // ---- the job: a chat, a classifier, or a task model ----

  function showJob() {
    const job = chosenJob();
    newConversation();
    result.replaceChildren();
    predictResult.replaceChildren();
    const chats = !job.classifier && !job.task;
    chatPanel.hidden = !chats;
    classifyPanel.hidden = !job.classifier;
    predictPanel.hidden = !job.task;
    for (const field of form.querySelectorAll(".chat-only")) field.hidden = !chats;
    if (job.task) {
      const qa = job.task === "question_answering";
      document.getElementById("predict-title").firstChild.textContent = `${TASK_ACTIONS[job.task]} `;
      document.getElementById("model-task").textContent = job.model;
      document.getElementById("predict-question-field").hidden = !qa;
      question.required = qa;
      document.getElementById("predict-text-label").textContent = qa ? "Context" : job.task === "seq2seq" ? "Input" : "Sentence";
      predictButton.textContent = TASK_BUTTONS[job.task];
    }
    sides[0].model.textContent = job.model;
    sides[1].model.textContent = job.base_model;
    document.getElementById("model-classifier").textContent = job.model;
  }
  select.addEventListener("change", showJob);
  showJob();
})();
