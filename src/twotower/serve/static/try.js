"use strict";
// The swipe demo: a demo user's token from /v1/try/session (kept in session storage), the cards from
// /v1/recommendations, each swipe recorded through /v1/decisions, then the feed asked for again.
(() => {
  const { el, api, num, thumb, fill } = TT;
  const KEY = "twotower.try.session";
  const NAMES = "twotower.try.names";
  const CARDS = 6;
  let session = null;
  let current = null;
  let upNext = [];
  let busy = false;
  let swipes = 0;

  function names() {
    try { return JSON.parse(localStorage.getItem(NAMES) || "[]"); } catch (e) { return []; }
  }

  async function start(name) {
    const response = await fetch("/v1/try/session", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ name }),
    });
    const data = await response.json();
    if (!response.ok) throw new Error(data.message || "HTTP " + response.status);
    session = data;
    sessionStorage.setItem(KEY, JSON.stringify(data));
    localStorage.setItem(NAMES, JSON.stringify([name, ...names().filter((n) => n !== name)].slice(0, 10)));
    await show();
  }

  async function show() {
    document.getElementById("pick").hidden = true;
    document.getElementById("swipe").hidden = false;
    fill("who", "demo user " + session.name + " (" + session.user_id.slice(0, 8) + "…)");
    await next();
  }

  async function next() {
    const before = new Set(upNext.map((v) => v.id));
    const feed = await api("/v1/recommendations", session.access_token, { method: "POST", body: { limit: CARDS } });
    const cards = feed.recommendations;
    current = cards[0] || null;
    upNext = cards.slice(1);
    fill("feed-meta", "feed from " + feed.algorithm + (feed.model_version ? " (" + feed.model_version + ")" : ""));
    document.body.dataset.algorithm = feed.algorithm;
    fill("card", ...(current ? [
      thumb(current.thumbnail_url, current.title),
      el("h2", { id: "card-title", text: current.title }),
      el("div", { class: "tags" }, ...(current.tags || []).slice(0, 8).map((t) => el("span", { class: "tag", text: t }))),
      el("p", { class: "muted", text: [current.maker, current.price != null ? "¥" + num(current.price, 0) : null]
        .filter(Boolean).join(" · ") + " · score " + num(current.similarity_score, 4) }),
    ] : [el("p", { text: "Nothing left to recommend." })]));
    document.getElementById("card").dataset.id = current ? current.id : "";
    const list = fill("feed", ...upNext.map((v) => el("li", { class: before.size && !before.has(v.id) ? "new" : "",
      "data-id": v.id }, el("div", { class: "small" }, thumb(v.thumbnail_url, v.title)),
      el("span", { text: v.title + " · " + (v.tags || []).slice(0, 3).join(", ") + " · " + num(v.similarity_score, 4) }))));
    list.dataset.ids = upNext.map((v) => v.id).join(",");
    document.body.dataset.state = "ready";
  }

  async function swipe(kind) {
    if (busy || !current) return;
    busy = true;
    document.body.dataset.state = "swiping";
    for (const id of ["like", "nope"]) document.getElementById(id).disabled = true;
    try {
      await api("/v1/decisions", session.access_token, { method: "POST",
        body: { video_id: current.id, decision_type: kind } });
      swipes += 1;
      fill("swipes", String(swipes));
      await next();
      fill("swipe-error");
    } catch (error) {
      fill("swipe-error", error.message);
      if (error.status === 401) { sessionStorage.removeItem(KEY); location.reload(); }
    } finally {
      for (const id of ["like", "nope"]) document.getElementById(id).disabled = false;
      busy = false;
      document.body.dataset.swipes = String(swipes);
      document.body.dataset.state = "ready";
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    fill("demo-names", ...names().concat(["alice", "bob", "carol"].filter((n) => !names().includes(n)))
      .map((n) => el("option", { value: n })));
    document.getElementById("pick-form").addEventListener("submit", (e) => {
      e.preventDefault();
      const name = document.getElementById("demo-name").value.trim().toLowerCase();
      start(name).catch((error) => fill("pick-error", error.message));
    });
    document.getElementById("like").addEventListener("click", () => swipe("like"));
    document.getElementById("nope").addEventListener("click", () => swipe("nope"));
    document.addEventListener("keydown", (e) => {
      if (document.getElementById("swipe").hidden || e.target instanceof HTMLInputElement) return;
      if (e.key === "ArrowRight") { e.preventDefault(); swipe("like"); }
      if (e.key === "ArrowLeft") { e.preventDefault(); swipe("nope"); }
    });
    const saved = sessionStorage.getItem(KEY);
    if (saved) {
      try { session = JSON.parse(saved); } catch (e) { session = null; }
      if (session && session.access_token) show().catch((error) => fill("pick-error", error.message));
    }
  });
})();
