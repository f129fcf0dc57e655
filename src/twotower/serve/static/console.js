"use strict";
// The operator console: every figure comes from the service-role API routes under /v1/admin/.
(() => {
  const { el, api, when, num, table, fill } = TT;
  const KEY = "twotower.console.token";
  const TREND = ["mean_pairwise_cosine", "effective_rank", "missing_share", "live.like_rate"];
  let timer = null;
  let rollbackTarget = null;

  const token = () => sessionStorage.getItem(KEY);
  const call = (path, options) => api(path, token(), options);

  function signedOut(message) {
    sessionStorage.removeItem(KEY);
    if (timer) clearInterval(timer);
    timer = null;
    document.getElementById("console").hidden = true;
    document.getElementById("signin").hidden = false;
    document.getElementById("sign-out").hidden = true;
    fill("signed-in");
    fill("signin-error", message || "");
    document.body.dataset.state = "signed-out";
  }

  async function signIn() {
    try {
      await versions();
    } catch (error) {
      if (error.status === 403) signedOut("Refused: this token does not have the service role (the console needs "
        + "the service key or a service-role token).");
      else if (error.status === 401) signedOut("Refused: " + error.message);
      else signedOut("Cannot reach the API: " + error.message);
      return;
    }
    document.getElementById("signin").hidden = true;
    document.getElementById("console").hidden = false;
    document.getElementById("sign-out").hidden = false;
    fill("signed-in", "signed in with the service role");
    document.body.dataset.state = "signed-in";
    await Promise.allSettled([quality(), serving(), jobs()]);
    timer = setInterval(() => { serving(); jobs(); }, 5000);
  }

  function guard(id, promise) {
    return promise.catch((error) => {
      if (error.status === 401 || error.status === 403) signedOut("Signed out: " + error.message);
      else fill(id, el("p", { class: "error", text: error.message }));
    });
  }

  async function versions() {
    const data = await call("/v1/admin/versions");
    fill("active-version", data.active || "none");
    fill("serving-version", data.serving || "no model (fallbacks)");
    document.body.dataset.active = data.active || "";
    const retired = data.versions.filter((v) => v.status === "retired")
      .sort((a, b) => String(b.retired_at).localeCompare(String(a.retired_at)));
    rollbackTarget = retired.length ? retired[0].version : null;
    const button = document.getElementById("rollback");
    button.disabled = !rollbackTarget;
    button.textContent = rollbackTarget ? "Roll back to " + rollbackTarget + "…" : "No version to roll back to";
    const gate = (v) => v.gate ? Object.entries(v.gate).filter(([, x]) => typeof x !== "object" || x === null)
      .map(([k, x]) => k + " " + num(x)).join(", ") : "—";
    const activate = (v) => v.rollback_target
      ? el("button", { text: "Activate…", onclick: () => ask(v.version) }) : "";
    fill("versions-table", table([
      ["version", (v) => el("span", { class: "status-" + v.status, text: v.version })],
      ["status", (v) => v.status], ["created", (v) => when(v.created_at)], ["activated", (v) => when(v.activated_at)],
      ["retired", (v) => when(v.retired_at)], ["videos", (v) => num(v.videos_embedded)], ["gate", gate],
      ["", activate],
    ], data.versions, { id: "versions-list" }));
    fill("deployments-table", table([
      ["when", (d) => when(d.created_at)], ["action", (d) => d.action], ["version", (d) => d.version],
      ["previous", (d) => d.previous_version], ["who", (d) => d.actor || "-"],
    ], data.deployments, { id: "deployments-list" }));
    return data;
  }

  function ask(version) {
    if (!version) return;
    const box = document.getElementById("confirm");
    box.dataset.version = version;
    fill("confirm-text", "Activate " + version + " instead of " + (document.body.dataset.active || "none")
      + "? Every server switches within a second; nothing is recomputed.");
    box.hidden = false;
  }

  async function confirmRollback() {
    const box = document.getElementById("confirm");
    box.hidden = true;
    fill("versions-message", "rolling back …");
    try {
      const done = await call("/v1/admin/rollback", { method: "POST", body: { version: box.dataset.version } });
      fill("versions-message", el("span", { class: "ok", text: "Active: " + done.active + " (was "
        + (done.previous || "none") + ")" }));
    } catch (error) {
      fill("versions-message", el("span", { class: "error", text: error.message }));
    }
    await guard("versions-table", versions());
    await Promise.allSettled([quality()]);
  }

  function plot(points, key) {
    const values = points.map((p) => p[key]).filter((x) => typeof x === "number");
    const ns = "http://www.w3.org/2000/svg";
    const svg = document.createElementNS(ns, "svg");
    svg.setAttribute("class", "plot");
    svg.setAttribute("viewBox", "0 0 200 60");
    svg.setAttribute("data-points", String(values.length));
    if (values.length) {
      const lo = Math.min(...values), hi = Math.max(...values), span = hi - lo || 1;
      const xy = values.map((v, i) => [values.length === 1 ? 100 : (i * 196) / (values.length - 1) + 2,
        56 - ((v - lo) / span) * 52]);
      const line = document.createElementNS(ns, "polyline");
      line.setAttribute("points", xy.map((p) => p.join(",")).join(" "));
      svg.append(line);
      for (const [x, y] of xy) {
        const dot = document.createElementNS(ns, "circle");
        dot.setAttribute("cx", x); dot.setAttribute("cy", y); dot.setAttribute("r", "2");
        svg.append(dot);
      }
    }
    const last = values.length ? num(values[values.length - 1]) : "no data";
    return el("figure", {}, svg, el("figcaption", { text: key + ": " + last }));
  }

  async function quality() {
    const data = await call("/v1/admin/quality/trend");
    const report = data.latest;
    const live = (report && report.live) || {};
    fill("quality-summary", !data.model_version
      ? el("p", { class: "muted", text: "No active version." })
      : report
        ? el("p", {}, "Latest check of ", el("strong", { text: data.model_version }), " at " + when(report.created_at)
          + ": ", el("strong", { class: report.passed ? "ok" : "error", text: report.passed ? "passed" : "ALERT" }),
          ". Live like-rate of what was served then: " + num(live.like_rate) + " (" + num(live.liked) + " likes of "
          + num(live.decided) + " swipes in " + num(live.window_hours, 0) + " h).")
        : el("p", { class: "muted", text: "No quality check of " + data.model_version
          + " yet (`twotower monitor` runs one)." }));
    const alerts = report ? report.alerts || [] : [];
    fill("quality-alerts", alerts.length
      ? el("ul", { id: "alerts" }, ...alerts.map((a) => el("li", { class: "error",
        text: (a.name || "alert") + ": " + (a.message || "") })))
      : el("p", { class: "muted", text: report ? "No alerts." : "" }));
    fill("quality-plots", ...TREND.map((k) => plot(data.points, k)));
  }

  async function serving() {
    return guard("serving-figures", call("/v1/admin/serving").then((f) => {
      const share = Object.entries(f.share_by_algorithm);
      fill("serving-figures",
        el("div", { class: "figures" },
          el("div", { class: "figure" }, el("strong", { id: "rps", text: num(f.requests_per_second, 1) }), "requests/s"),
          el("div", { class: "figure" }, el("strong", { text: num(f.p50_ms, 1) }), "p50 ms"),
          el("div", { class: "figure" }, el("strong", { text: num(f.p99_ms, 1) }), "p99 ms"),
          el("div", { class: "figure" }, el("strong", { text: num(f.requests) }),
            "requests in the last " + num(f.window_seconds, 0) + " s")),
        table([["algorithm", (r) => r[0]], ["share", (r) => (100 * r[1]).toFixed(1) + " %"],
          ["", (r) => { const bar = el("div", { class: "bar" }); bar.style.width = Math.round(200 * r[1]) + "px";
            return bar; }]],
        share, { id: "share" }));
    }));
  }

  async function jobs() {
    return guard("jobs-table", call("/v1/admin/jobs").then((data) => {
      const progress = (j) => j.total_chunks ? j.chunks_done + "/" + j.total_chunks + " chunks ("
        + Math.round((100 * j.chunks_done) / j.total_chunks) + " %)" : "—";
      fill("jobs-table", table([
        ["id", (j) => j.id], ["kind", (j) => j.kind], ["version", (j) => j.model_version], ["status", (j) => j.status],
        ["progress", progress], ["rows", (j) => num(j.rows_done)], ["started", (j) => when(j.started_at)],
        ["finished", (j) => when(j.finished_at)], ["error", (j) => j.error],
      ], data.jobs, { id: "jobs-list" }));
      fill("syncs-table", table([
        ["source", (s) => s.source], ["watermark", (s) => when(s.watermark)], ["last run", (s) => when(s.last_run_at)],
        ["summary", (s) => JSON.stringify(s.last_summary)],
      ], data.syncs));
    }));
  }

  const feedTable = (feed, id) => table([
    ["#", (v) => feed.recommendations.indexOf(v) + 1], ["title", (v) => v.title],
    ["tags", (v) => (v.tags || []).slice(0, 4).join(", ")], ["score", (v) => num(v.similarity_score, 4)],
    ["id", (v) => el("a", { href: "#", text: v.id.slice(0, 8), onclick: (e) => { e.preventDefault(); video(v.id); } })],
  ], feed.recommendations, { id });

  async function user(id) {
    const data = await call("/v1/admin/users/" + encodeURIComponent(id));
    fill("user-result",
      el("p", { text: data.likes + " likes, " + data.nopes + " nopes. Feed now: " + data.feed.algorithm
        + (data.feed.model_version ? " (" + data.feed.model_version + ")" : "") }),
      el("h3", { text: "Recent swipes" }),
      table([["when", (d) => when(d.created_at)], ["swipe", (d) => d.decision_type], ["title", (d) => d.title]],
        data.recent, { id: "user-recent" }),
      el("h3", { text: "Feed" }), feedTable(data.feed, "user-feed"));
  }

  async function video(id) {
    document.getElementById("video-id").value = id;
    const data = await call("/v1/admin/videos/" + encodeURIComponent(id));
    const v = data.video;
    const facts = [["title", v.title], ["source", v.source + " / " + v.external_id], ["maker", v.maker],
      ["price", v.price], ["released", when(v.product_released_at)], ["tags", (v.tags || []).join(", ")],
      ["performers", (v.performers || []).join(", ")], ["likes / nopes", v.likes + " / " + v.nopes],
      ["active", String(v.is_active)]];
    fill("video-result", table([["", (r) => r[0]], ["", (r) => r[1]]], facts, { id: "video-facts" }),
      el("h3", { text: "Nearest neighbours" + (data.neighbours ? " in " + data.neighbours.model_version : "") }),
      data.neighbours ? feedTable(data.neighbours, "video-neighbours") : el("p", { class: "muted", text: data.note }));
  }

  document.addEventListener("DOMContentLoaded", () => {
    document.getElementById("signin-form").addEventListener("submit", (e) => {
      e.preventDefault();
      const value = document.getElementById("token").value.trim().replace(/^Bearer\s+/i, "");
      document.getElementById("token").value = "";
      if (!value) return;
      sessionStorage.setItem(KEY, value);
      signIn();
    });
    document.getElementById("sign-out").addEventListener("click", () => signedOut("Signed out."));
    document.getElementById("rollback").addEventListener("click", () => ask(rollbackTarget));
    document.getElementById("confirm-yes").addEventListener("click", confirmRollback);
    document.getElementById("confirm-no").addEventListener("click", () => { document.getElementById("confirm").hidden = true; });
    const lookup = (form, input, show, out) => document.getElementById(form).addEventListener("submit", (e) => {
      e.preventDefault();
      show(document.getElementById(input).value.trim()).catch((error) => fill(out, el("p", { class: "error",
        text: error.message })));
    });
    lookup("user-form", "user-id", user, "user-result");
    lookup("video-form", "video-id", video, "video-result");
    if (token()) signIn();
  });
})();
