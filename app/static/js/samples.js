/* A job page's answers panel: at the latest evaluation, the model's answers to the same
   held-out prompts beside the reference and the base model's answer, ordered by loss so the
   best and worst rows stand out; or a classifier's misclassified evaluation rows. job.js feeds
   it the page's sample sets and each `samples` event of the job's stream. */
"use strict";

const jobSamples = (() => {
  const { el, fmt } = tl;
  const seen = new Set();
  let base = null; // the base model's answers (kind "base", step 0)
  let latest = null; // the answers of the latest evaluation
  let evaluations = 0;
  const card = document.getElementById("samples-card");
  const table = document.getElementById("samples-table");
  const caption = document.getElementById("samples-caption");
  const order = document.getElementById("samples-order");

  function add(set) {
    if (seen.has(set.seq)) return;
    seen.add(set.seq);
    if (set.kind === "base") base = set;
    else {
      evaluations += 1;
      if (!latest || set.step >= latest.step) latest = set;
    }
    render();
  }

  /** An answer the evaluation's time budget cut short says so. */
  function cutMark(row) {
    return row && row.cut ? el("span", { class: "muted cut", text: " …", title: "cut short: the evaluation's time for samples ran out" }) : null;
  }

  function generationRows() {
    const baseByRow = new Map((base ? base.rows : []).map((row) => [row.row, row]));
    const rows = latest ? [...latest.rows] : base.rows.map((row) => ({ ...row, answer: null, loss: null }));
    const ranked = rows.filter((row) => row.loss !== null).sort((a, b) => a.loss - b.loss);
    const best = ranked.length > 1 ? ranked[0] : null;
    const worst = ranked.length > 1 ? ranked[ranked.length - 1] : null;
    if (order.value === "worst") rows.sort((a, b) => (b.loss ?? 0) - (a.loss ?? 0));
    else if (order.value === "best") rows.sort((a, b) => (a.loss ?? 0) - (b.loss ?? 0));
    table.replaceChildren(
      el("thead", {}, el("tr", {}, el("th", { text: "Prompt" }), el("th", { text: "Reference" }),
        el("th", { text: latest ? `Answer at step ${latest.step}` : "Answer" }), el("th", { text: "Base model" }),
        el("th", { class: "num", text: "Loss", title: "The model's loss on the reference answer" }))),
      el("tbody", {}, rows.map((row) => {
        const baseRow = baseByRow.get(row.row);
        const mark = row === best ? el("span", { class: "badge good", text: "best" }) : row === worst ? el("span", { class: "badge bad", text: "worst" }) : null;
        return el("tr", { "data-row": row.row },
          el("td", { class: "sample-text", text: row.prompt }),
          el("td", { class: "sample-text", text: row.reference }),
          el("td", { class: "sample-text answer" }, row.answer ?? "–", cutMark(row)),
          el("td", { class: "sample-text muted" }, baseRow ? baseRow.answer : "–", cutMark(baseRow)),
          el("td", { class: "num" }, fmt.loss(row.loss), " ", mark));
      })));
  }

  function misclassifiedRows() {
    table.replaceChildren(
      el("thead", {}, el("tr", {}, el("th", { text: "Text" }), el("th", { text: "Predicted" }), el("th", { text: "True label" }),
        el("th", { class: "num", text: "Probability" }))),
      el("tbody", {}, latest.rows.length ? latest.rows.map((row) => el("tr", {},
        el("td", { class: "sample-text", text: row.text }), el("td", { text: row.predicted }), el("td", { text: row.label }),
        el("td", { class: "num", text: `${(row.probability * 100).toFixed(1)}%` })))
        : [el("tr", {}, el("td", { colspan: 4, class: "muted", text: "Every evaluation row was classified right." }))]));
  }

  function render() {
    card.hidden = !latest && !base;
    if (card.hidden) return;
    const misclassified = latest && latest.kind === "misclassified";
    order.hidden = misclassified;
    caption.textContent = !latest
      ? "the base model's answers; the model's come at the first evaluation"
      : misclassified
        ? `misclassified evaluation rows at step ${latest.step} (the first ${latest.rows.length || "none"})`
        : `answers to the same ${latest.rows.length} held-out prompts at step ${latest.step}, evaluation ${evaluations}`;
    if (misclassified) misclassifiedRows();
    else generationRows();
  }

  order.addEventListener("change", render);
  return { add };
})();
