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
        el("td", { class: "token-team", text: token.team_name || "all my teams" }),
        el("td", { text: fmt.ago(token.created_at) }), el("td", { text: token.last_used_at ? fmt.ago(token.last_used_at) : "never" }),
        el("td", { text: token.expires_at ? (expired ? "expired" : fmt.time(token.expires_at)) : "never" }), el("td", {}, revoke));
    }));
  }

  // Tokens are bound to the current team unless asked otherwise (like an OpenAI project key).
  const tokenTeam = document.getElementById("token-team");
  tokenTeam.append(...data.teams.map((team) =>
    el("option", { value: team.id, text: `Team ${team.name} only`, selected: team.id === data.current_team_id })),
  el("option", { value: "", text: "All my teams" }));

  document.getElementById("token-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const form = event.target;
    const body = { name: form.elements.name.value.trim() || "default" };
    if (form.elements.expires.value) body.expires_in_days = Number(form.elements.expires.value);
    if (form.elements.team.value) body.team_id = Number(form.elements.team.value);
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
    const canManage = team.role === "owner" || data.is_admin;
    const response = await tl.api("GET", `/api/teams/${team.id}/members`);
    const rows = (response.ok ? response.data : []).map((member) => {
      const me = member.email === data.me;
      const cells = [el("td", { text: member.email + (me ? " (you)" : "") })];
      const remove = el("button", { type: "button", class: "danger", text: me ? "Leave" : "Remove" });
      remove.addEventListener("click", async () => {
        if (!confirm(me ? `Leave ${team.name}?` : `Remove ${member.email} from ${team.name}?`)) return;
        const result = await tl.api("DELETE", `/api/teams/${team.id}/members/${member.user_id}`);
        if (!result.ok) return tl.toast(tl.errorText(result.data), "error");
        me ? location.reload() : renderAll();
      });
      if (canManage) {
        const select = el("select", { "aria-label": `Role of ${member.email}` },
          ["owner", "member", "viewer"].map((role) => el("option", { value: role, selected: role === member.role, text: role })));
        select.addEventListener("change", () => change(team, { email: member.email, role: select.value }));
        cells.push(el("td", {}, select), el("td", {}, remove));
      } else cells.push(el("td", {}, el("span", { class: "badge", text: member.role })), el("td", {}, me ? remove : null));
      return el("tr", {}, ...cells);
    });
    const card = el("section", { class: "card team-card", "data-team": team.name },
      el("h2", {}, `Team ${team.name} `, el("span", { class: "badge", text: `you: ${team.role}` })),
      el("table", {}, el("thead", {}, el("tr", {}, el("th", { text: "Member" }), el("th", { text: "Role" }), el("th"))), el("tbody", {}, rows)));
    if (canManage) card.append(...await invitations(team), addMember(team));
    return card;
  }

  function addMember(team) {
    const form = el("form", { class: "actions add-member" },
      el("input", { type: "email", name: "email", required: true, placeholder: "Email of an existing user", "aria-label": "Email" }),
      el("select", { name: "role", "aria-label": "Role" }, ["member", "viewer", "owner"].map((r) => el("option", { text: r }))),
      el("button", { type: "submit", text: "Add member" }));
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      change(team, { email: form.elements.email.value, role: form.elements.role.value });
    });
    return form;
  }

  /** Owners: the invite form (the link is shown to copy, once) and the invitations still open. */
  async function invitations(team) {
    const response = await tl.api("GET", `/api/teams/${team.id}/invitations`);
    const link = el("div", { class: "token-once hint invitation-link", hidden: true });
    const form = el("form", { class: "actions invite" },
      el("input", { type: "email", name: "email", required: true, placeholder: "Email to invite", "aria-label": "Email to invite" }),
      el("select", { name: "role", "aria-label": "Role of the invitee" }, ["member", "viewer", "owner"].map((r) => el("option", { text: r }))),
      el("button", { type: "submit", class: "primary", text: "Invite" }));
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const result = await tl.api("POST", `/api/teams/${team.id}/invitations`, { email: form.elements.email.value, role: form.elements.role.value });
      if (!result.ok) return tl.toast(tl.errorText(result.data), "error");
      const copy = el("button", { type: "button", text: "Copy" });
      copy.addEventListener("click", async () => { await navigator.clipboard.writeText(result.data.url); tl.toast("Link copied"); });
      link.replaceChildren(el("span", { text: `Send this link to ${result.data.email}; it works once, and is not shown again:` }),
        el("code", { class: "invitation-url", text: result.data.url }), copy);
      link.hidden = false;
      form.reset();
      pending.replaceWith(pendingTable(team, [result.data, ...open.filter((i) => i.email !== result.data.email)]));
    });
    const open = response.ok ? response.data : [];
    let pending = null;
    pendingTable(team, open);
    function pendingTable(team, list) {
      const table = el("table", { class: "invitations" },
        el("thead", {}, el("tr", {}, el("th", { text: "Invited" }), el("th", { text: "Role" }), el("th", { text: "Expires" }), el("th"))),
        el("tbody", {}, list.map((invitation) => {
          const revoke = el("button", { type: "button", class: "danger", text: "Revoke" });
          revoke.addEventListener("click", async () => {
            const result = await tl.api("DELETE", `/api/teams/${team.id}/invitations/${invitation.id}`);
            result.ok ? renderAll() : tl.toast(tl.errorText(result.data), "error");
          });
          return el("tr", {}, el("td", { text: invitation.email }), el("td", {}, el("span", { class: "badge", text: invitation.role })),
            el("td", { text: fmt.time(invitation.expires_at) }), el("td", {}, revoke));
        })));
      table.hidden = list.length === 0;
      pending = table;
      return table;
    }
    return [el("h3", { text: "Invite someone" }), form, link, pending];
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
