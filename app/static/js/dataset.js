/* One dataset: statistics, the length histogram, and a preview (chats as bubbles). */
"use strict";

(() => {
  const { el, fmt } = tl;
  const data = tl.pageData();
  const dataset = data.dataset;
  const stats = dataset.stats || {};
  const PAGE = 10;
  let offset = 0;

  document.getElementById("dataset-meta").textContent =
    `${data.formats[dataset.format] || dataset.format} · ${fmt.bytes(dataset.size_bytes)} · uploaded by ${dataset.created_by || "–"} ${fmt.ago(dataset.created_at)} · sha256 ${dataset.sha256.slice(0, 12)}…`;
  document.getElementById("train-on-this").href = `/jobs/new?dataset=${dataset.id}`;

  const card = (label, value, note, explanation) => el("section", { class: "card stat-card", title: explanation || null },
    el("div", { class: "value", text: value }), el("div", { class: "label", text: label }),
    note ? el("small", { class: "muted", text: note }) : null);
  const chars = stats.chars_per_row || {};
  const messages = stats.messages_per_row;
  const duplicates = stats.duplicates || { rows: 0 };
  const pairs = stats.pairs;  // preference pairs: how long the chosen answers are beside the rejected ones
  // Text and classification rows have no messages: no card for them (replaceChildren would print a null as "null").
  document.getElementById("stat-cards").replaceChildren(...[
    card("rows", fmt.number(dataset.row_count)),
    card("estimated tokens", fmt.compact(stats.estimated_tokens), "≈ characters / 4", stats.token_estimate),
    card("characters per row", `${fmt.number(chars.median)} median`, `min ${fmt.number(chars.min)} · p95 ${fmt.number(chars.p95)} · max ${fmt.number(chars.max)}`),
    messages ? card("messages per row", `${fmt.number(messages.median)} median`, `min ${fmt.number(messages.min)} · p95 ${fmt.number(messages.p95)} · max ${fmt.number(messages.max)}`) : null,
    pairs ? card("answer length, chosen · rejected", `${fmt.number(pairs.chosen_chars.median)} · ${fmt.number(pairs.rejected_chars.median)} chars`,
      `medians; chosen the longer in ${Math.round((100 * pairs.chosen_longer) / Math.max(1, stats.rows))}% of pairs`,
      "DPO also learns a taste for length when the chosen answers are mostly the longer ones") : null,
    card("duplicate rows", fmt.number(duplicates.rows), duplicates.rows && duplicates.first_lines ? `e.g. lines ${duplicates.first_lines.slice(0, 5).join(", ")}` : "none found"),
  ].filter(Boolean));

  // The length histogram, with its axes: rows (0, half, most) up the side, characters along the bottom.
  const histogram = stats.length_histogram || [];
  const most = Math.max(1, ...histogram.map((b) => b.rows));
  document.getElementById("histogram").replaceChildren(...histogram.map((bucket) => {
    const bar = el("div", { class: "bar", title: `${fmt.number(bucket.from)}–${fmt.number(bucket.to)} characters: ${fmt.number(bucket.rows)} rows` });
    bar.style.height = `${Math.max(1, (bucket.rows / most) * 100)}%`;
    return bar;
  }));
  document.getElementById("histogram-y").replaceChildren(...(histogram.length
    ? [most, most / 2, 0].map((rows) => el("span", { text: fmt.number(rows) })) : []));
  if (histogram.length) {
    // A tick under every few bars, at the bucket's lower edge, and the last bucket's upper edge.
    const every = Math.max(1, Math.ceil(histogram.length / 6));
    const ticks = histogram.map((bucket, i) => el("span", { text: i % every === 0 ? fmt.compact(bucket.from) : "" }));
    ticks.push(el("span", { class: "last", text: fmt.compact(histogram.at(-1).to) }));
    document.getElementById("histogram-labels").replaceChildren(...ticks);
  }
  document.getElementById("histogram-figure").hidden = !histogram.length;

  // What a person should know before training on it (KTO feedback whose labels are unbalanced).
  document.getElementById("dataset-warnings").replaceChildren(...(stats.warnings || []).map((warning) =>
    el("p", { class: "notice warning", text: warning })));

  const composition = [];
  for (const [role, count] of Object.entries(stats.roles || {})) composition.push([`${role} messages`, fmt.number(count)]);
  for (const [label, count] of Object.entries(stats.labels || {}).slice(0, 20)) composition.push([`label “${label}”`, fmt.number(count)]);
  for (const [type, count] of Object.entries(stats.entities || {}).slice(0, 20)) composition.push([`${type} entities`, fmt.number(count)]);
  for (const [kind, count] of Object.entries(stats.answers || {})) composition.push([`${kind} questions`, fmt.number(count)]);
  composition.push(["format", data.formats[dataset.format] || dataset.format]);
  document.getElementById("composition").replaceChildren(...composition.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: v })]));

  const SHAREGPT_ROLES = { human: "user", user: "user", gpt: "assistant", assistant: "assistant", system: "system", function_call: "assistant", observation: "tool", tool: "tool" };
  const text = (content) => (content === null || content === undefined ? "" : typeof content === "string" ? content
    : Array.isArray(content) ? content.map((part) => part.text || "").join("") : JSON.stringify(content));

  function bubbles(turns) {
    return el("div", { class: "bubbles" }, turns.map(({ role, content, extra }) =>
      el("div", { class: `bubble ${role}` }, el("span", { class: "role", text: role }), content, extra ? el("code", { class: "block", text: extra }) : null)));
  }

  // The tools a conversation may call (chat "tools", or ShareGPT's list or JSON string of them):
  // their names, and their definitions when opened.
  function toolList(tools) {
    if (typeof tools === "string") {
      try { tools = JSON.parse(tools); } catch { return null; }
    }
    if (!Array.isArray(tools) || !tools.length) return null;
    const names = tools.map((t) => (t && (t.function || t).name) || "?");
    return el("details", { class: "tools" }, el("summary", { text: `Tools: ${names.join(", ")}` }),
      el("code", { class: "block", text: tools.map((t) => JSON.stringify(t, null, 2)).join("\n") }));
  }

  // Preference data: the prompt, then the chosen and the rejected answer side by side (or KTO's
  // one answer, marked good or bad).
  const chatTurns = (value, role) => (Array.isArray(value)
    ? value.map((m) => ({ role: m.role || role, content: text(m.content), extra: m.tool_calls ? JSON.stringify(m.tool_calls.map((c) => c.function || c)) : null }))
    : [{ role, content: text(value) }]);
  const gptTurn = (side) => [{ role: "assistant", content: text(side && typeof side === "object" && !Array.isArray(side) ? side.value : side) }];
  function side(kind, title, turns) {
    return el("div", { class: `pair-side ${kind}` }, el("div", { class: "pair-title", text: title }), bubbles(turns));
  }
  function renderPreference(row) {
    let prompt, answers;
    if (row.input && row.preferred_output) {
      prompt = chatTurns(row.input.messages || [], "user");
      answers = [side("chosen", "preferred", chatTurns(row.preferred_output, "assistant")),
        side("rejected", "non-preferred", chatTurns(row.non_preferred_output, "assistant"))];
      return el("div", {}, toolList(row.input.tools), bubbles(prompt), el("div", { class: "pair" }, answers));
    }
    if (row.conversations) {
      prompt = row.conversations.map((t) => ({ role: SHAREGPT_ROLES[String(t.from).toLowerCase()] || "user", content: text(t.value) }));
      if (row.system) prompt.unshift({ role: "system", content: text(row.system) });
      answers = [side("chosen", "chosen", gptTurn(row.chosen)), side("rejected", "rejected", gptTurn(row.rejected))];
    } else if ("chosen" in row) {
      prompt = row.prompt === "" ? [] : chatTurns(row.prompt, "user");
      answers = [side("chosen", "chosen", chatTurns(row.chosen, "assistant")), side("rejected", "rejected", chatTurns(row.rejected, "assistant"))];
    } else {
      prompt = chatTurns(row.prompt, "user");
      const good = row.label === true;
      answers = [side(good ? "chosen" : "rejected", good ? "good answer" : "bad answer", chatTurns(row.completion, "assistant"))];
    }
    return el("div", {}, toolList(row.tools), bubbles(prompt), el("div", { class: `pair${answers.length === 1 ? " single" : ""}` }, answers));
  }
  const isPreference = (row) => (row.input && row.preferred_output) || ("chosen" in row && "rejected" in row)
    || ("completion" in row && typeof row.label === "boolean");

  function renderRow(row) {
    if (isPreference(row)) return renderPreference(row);
    if (Array.isArray(row.tokens)) return tl.taggedTokens(row.tokens, (row.tags || row.ner_tags).map(String));
    if ("question" in row && "context" in row) {
      const answers = row.answers ? row.answers.text.map((t, i) => ({ start: row.answers.answer_start[i], text: t }))
        : row.answer ? [{ start: row.context.indexOf(row.answer), text: row.answer }] : [];
      return el("dl", { class: "fields" }, el("dt", { text: "question" }), el("dd", { text: row.question }),
        el("dt", { text: "context" }), el("dd", {}, tl.markedSpan(row.context, answers[0])),
        answers.length ? null : el("dd", { class: "muted", text: "no answer in the context" }));
    }
    if ("target" in row) {
      return el("dl", { class: "fields" }, el("dt", { text: "input" }), el("dd", { text: row.input ?? row.source }),
        el("dt", { text: "target" }), el("dd", { text: row.target }));
    }
    if (row.messages) {
      return el("div", {}, toolList(row.tools), bubbles(row.messages.map((m) => ({ role: m.role, content: text(m.content),
        extra: m.tool_calls ? JSON.stringify(m.tool_calls.map((c) => c.function || c)) : null }))));
    }
    if (row.conversations) {
      const turns = row.conversations.map((t) => {
        const speaker = String(t.from).toLowerCase();
        const call = speaker === "function_call";
        return { role: SHAREGPT_ROLES[speaker] || "user", content: call ? "" : text(t.value), extra: call ? text(t.value) : null };
      });
      if (row.system) turns.unshift({ role: "system", content: text(row.system) });
      return el("div", {}, toolList(row.tools), bubbles(turns));
    }
    return el("dl", { class: "fields" }, Object.entries(row).flatMap(([key, value]) =>
      [el("dt", { text: key }), el("dd", { text: typeof value === "string" ? value : JSON.stringify(value) })]));
  }

  async function loadPage() {
    const response = await tl.api("GET", `/api/datasets/${dataset.id}/preview?offset=${offset}&limit=${PAGE}`);
    if (!response.ok) return tl.toast(tl.errorText(response.data), "error");
    document.getElementById("preview").replaceChildren(...response.data.rows.map((item) =>
      el("div", { class: "preview-row" }, el("div", { class: "line-no", text: `line ${item.line}` }), renderRow(item.row))));
    const last = Math.min(offset + PAGE, dataset.row_count);
    document.getElementById("page-label").textContent = `rows ${fmt.number(offset + 1)}–${fmt.number(last)} of ${fmt.number(dataset.row_count)}`;
    document.getElementById("prev-page").disabled = offset === 0;
    document.getElementById("next-page").disabled = last >= dataset.row_count;
  }
  document.getElementById("prev-page").addEventListener("click", () => { offset = Math.max(0, offset - PAGE); loadPage(); });
  document.getElementById("next-page").addEventListener("click", () => { offset += PAGE; loadPage(); });

  const remove = document.getElementById("delete-dataset");
  remove.hidden = !data.can_write;
  remove.addEventListener("click", async () => {
    if (!confirm(`Delete ${dataset.name}? Jobs that used it keep their results.`)) return;
    const response = await tl.api("DELETE", `/api/datasets/${dataset.id}`);
    if (!response.ok) return tl.toast(tl.errorText(response.data), "error");
    location.href = `/datasets?deleted=${encodeURIComponent(dataset.name)}`;
  });

  loadPage();
})();
