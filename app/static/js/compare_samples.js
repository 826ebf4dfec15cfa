/* The compare page's answers: the compared jobs' answers at their last evaluation to the same
   held-out prompts, one column per job. compare.js calls `load` with the chosen jobs. */
"use strict";

const compareSamples = (() => {
  const { el, fmt } = tl;
  const card = document.getElementById("compare-samples-card");
  const table = document.getElementById("compare-samples");
  let asked = 0;

  async function load(ids) {
    const ticket = ++asked;
    if (!ids.length) { card.hidden = true; return; }
    const response = await tl.api("GET", `/api/compare/samples?${ids.map((id) => `jobs=${id}`).join("&")}`);
    if (ticket !== asked || !response.ok) return;
    const { jobs, prompts } = response.data;
    card.hidden = !prompts.length;
    table.replaceChildren(
      el("thead", {}, el("tr", {}, el("th", { text: "Prompt" }), el("th", { text: "Reference" }),
        jobs.map((job) => el("th", { text: `#${job.id} ${job.name}` })))),
      el("tbody", {}, prompts.map((p) => el("tr", {},
        el("td", { class: "sample-text", text: p.prompt }), el("td", { class: "sample-text", text: p.reference }),
        p.answers.map((answer, i) => el("td", { class: "sample-text" }, answer ?? "–",
          p.losses[i] === null ? null : el("div", { class: "muted", text: `loss ${fmt.loss(p.losses[i])}` })))))));
  }
  return { load };
})();
