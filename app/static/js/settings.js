/* Settings: tokens (created, shown once, revoked), members and roles, admin forms. */
"use strict";

(() => {
  const { el, fmt } = tl;
  const data = tl.pageData();

  async function loadTokens() {
    const response = await tl.api("GET", "/api/tokens");
    if (!response.ok) return tl.toast(tl.errorText(response.data), "error");
    document.getElementById("tokens").replaceChildren(...response.data.map((token) => {
      const revoked = !!token.revoked_at;
      const expired = token.expires_at && new Date(token.expires_at) < new Date();
      const revoke = el("button", { type: "button", class: "danger", disabled: revoked, text: revoked ? "Revoked" : "Revoke" });
      revoke.addEventListener("click", async () => {
        if (!confirm(`Revoke the token "${token.name}"? Programs using it stop working at once.`)) return;
        const result = await tl.api("DELETE", `/api/tokens/${token.id}`);
        result.ok ? loadTokens() : tl.toast(tl.errorText(result.data), "error");
      });
      return el("tr", { class: revoked || expired ? "muted" : "" },
        el("td", { text: token.name }), el("td", {}, el("code", { text: `${token.prefix}…` })),
        el("td", { text: fmt.ago(token.created_at) }), el("td", { text: token.last_used_at ? fmt.ago(token.last_used_at) : "never" }),
        el("td", { text: token.expires_at ? (expired ? "expired" : fmt.time(token.expires_at)) : "never" }), el("td", {}, revoke));
    }));
  }

  document.getElementById("token-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const form = event.target;
    const body = { name: form.elements.name.value.trim() || "default" };
    if (form.elements.expires.value) body.expires_in_days = Number(form.elements.expires.value);
    const response = await tl.api("POST", "/api/tokens", body);
    if (!response.ok) return tl.toast(tl.errorText(response.data), "error");
    document.getElementById("new-token-value").textContent = response.data.token;
    document.getElementById("new-token").hidden = false;
    form.reset();
    loadTokens();
  });
  // The new token stays on screen, whatever else is done on the page, until its owner says they have it.
  document.getElementById("token-done").addEventListener("click", () => {
    document.getElementById("new-token").hidden = true;
    document.getElementById("new-token-value").textContent = "";
  });
  document.getElementById("copy-token").addEventListener("click", async () => {
    await navigator.clipboard.writeText(document.getElementById("new-token-value").textContent);
    tl.toast("Token copied");
  });

  async function renderTeam(team) {
    const response = await tl.api("GET", `/api/teams/${team.id}/members`);
    const canManage = team.role === "owner" || data.is_admin;
    const rows = (response.ok ? response.data : []).map((member) => {
      const cells = [el("td", { text: member.email + (member.email === data.me ? " (you)" : "") })];
      if (canManage) {
        const select = el("select", { "aria-label": `Role of ${member.email}` },
          ["owner", "member", "viewer"].map((role) => el("option", { value: role, selected: role === member.role, text: role })));
        select.addEventListener("change", () => change(team, { email: member.email, role: select.value }));
        const remove = el("button", { type: "button", class: "danger", text: "Remove" });
        remove.addEventListener("click", async () => {
          if (!confirm(`Remove ${member.email} from ${team.name}?`)) return;
          const result = await tl.api("DELETE", `/api/teams/${team.id}/members/${member.user_id}`);
          result.ok ? renderAll() : tl.toast(tl.errorText(result.data), "error");
        });
        cells.push(el("td", {}, select), el("td", {}, remove));
      } else cells.push(el("td", {}, el("span", { class: "badge", text: member.role })), el("td"));
      return el("tr", {}, ...cells);
    });
    const card = el("section", { class: "card" },
      el("h2", {}, `Team ${team.name} `, el("span", { class: "badge", text: `you: ${team.role}` })),
      el("table", {}, el("thead", {}, el("tr", {}, el("th", { text: "Member" }), el("th", { text: "Role" }), el("th"))), el("tbody", {}, rows)));
    if (canManage) {
      const form = el("form", { class: "actions add-member" },
        el("input", { type: "email", name: "email", required: true, placeholder: "Email of an existing user", "aria-label": "Email" }),
        el("select", { name: "role", "aria-label": "Role" }, ["member", "viewer", "owner"].map((r) => el("option", { text: r }))),
        el("button", { type: "submit", class: "primary", text: "Add member" }));
      form.addEventListener("submit", (event) => {
        event.preventDefault();
        change(team, { email: form.elements.email.value, role: form.elements.role.value });
      });
      card.append(form);
    }
    return card;
  }

  async function change(team, body) {
    const response = await tl.api("PUT", `/api/teams/${team.id}/members`, body);
    if (!response.ok) tl.toast(tl.errorText(response.data), "error");
    renderAll();
  }

  async function renderAll() {
    const cards = await Promise.all(data.teams.map(renderTeam));
    document.getElementById("teams").replaceChildren(...cards);
  }

  const userForm = document.getElementById("user-form");
  if (userForm) {
    const teamSelect = document.getElementById("user-team");
    for (const team of data.teams) teamSelect.append(el("option", { value: team.name, text: team.name }));
    userForm.addEventListener("submit", async (event) => {
      event.preventDefault();
      const f = userForm.elements;
      const response = await tl.api("POST", "/api/users", { email: f.email.value, password: f.password.value, team: f.team.value, role: f.role.value });
      if (!response.ok) return tl.toast(tl.errorText(response.data), "error");
      tl.toast(`Added ${response.data.email}`);
      userForm.reset();
      renderAll();
    });
    // In place, not by reloading: a reload would take away a new token that is still shown once.
    document.getElementById("team-form").addEventListener("submit", async (event) => {
      event.preventDefault();
      const response = await tl.api("POST", "/api/teams", { name: event.target.elements.name.value });
      if (!response.ok) return tl.toast(tl.errorText(response.data), "error");
      data.teams.push(response.data);
      teamSelect.append(el("option", { value: response.data.name, text: response.data.name }));
      event.target.reset();
      tl.toast(`Created team ${response.data.name}`);
      renderAll();
    });
  }

  loadTokens();
  renderAll();
})();
