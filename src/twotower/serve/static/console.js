"use strict";
// The operator console: every figure comes from the service-role API routes under /v1/admin/.
(() => {
  const { el, api, when, num, table, fill } = TT;
  const KEY = "twotower.console.token";
  const TREND = ["mean_pairwise_cosine", "effective_rank", "missing_share", "live.like_rate"];
  let timer = null;
  let rollbackTarget = null;
  let ticks = 0;
  let shown = null; // the experiment on screen (null: none has been run)
  let pending = null; // the experiment action waiting for its confirmation

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
    await Promise.allSettled([quality(), serving(), jobs(), guard("experiment-summary", experiment())]);
    timer = setInterval(() => {
      serving(); jobs();
      // each look at an experiment is recorded: every 30 s, and only while one runs
      if (++ticks % 6 === 0 && shown && shown.status === "running") guard("experiment-summary", experiment());
    }, 5000);
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
    candidates(data.versions);
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

  // --- the online experiment: arms, difference and its intervals, looks over time, start / stop ---
  const Z95 = 1.959963984540054;
  const isNum = (x) => typeof x === "number" && Number.isFinite(x);
  const pct = (x) => isNum(x) ? (100 * x).toFixed(1) + " %" : "—";
  const rate = (x) => isNum(x) ? x.toFixed(3) : "—";
  const signed = (x, digits) => isNum(x) ? (x < 0 ? "−" : "+") + Math.abs(x).toFixed(digits) : "—";
  const interval = (pair, digits) => pair
    ? "[" + signed(pair[0], digits) + ", " + signed(pair[1], digits) + "]" : "—";
  const VERDICT = { candidate_better: "ok", candidate_worse: "error" };

  function candidates(list) {
    const select = document.getElementById("experiment-candidate");
    const kept = select.value;
    const names = list.filter((v) => v.status === "candidate" || v.status === "retired").map((v) => v.version);
    select.replaceChildren(...names.map((v) => el("option", { value: v, text: v })));
    if (names.includes(kept)) select.value = kept;
    buttons();
  }

  function buttons() {
    const running = !!shown && shown.status === "running";
    document.getElementById("experiment-start").disabled = running
      || !document.getElementById("experiment-candidate").options.length;
    document.getElementById("experiment-stop").disabled = !running;
    document.getElementById("experiment-promote").disabled = !running;
  }

  async function experiment() {
    const data = await call("/v1/admin/experiment");
    const exp = data.experiment, result = data.result;
    shown = exp;
    document.body.dataset.experiment = exp ? exp.status : "none";
    buttons();
    if (!exp) {
      fill("experiment-summary", el("p", { class: "muted", id: "experiment-state", text: "No experiment has been "
        + "run. Start one: the candidate answers a share of the users, the active version the rest." }));
      ["experiment-arms", "experiment-comparison", "experiment-plots"].forEach((id) => fill(id));
      return data;
    }
    const serving = data.serving;
    fill("experiment-summary",
      el("p", { id: "experiment-state" }, "#" + exp.id + ": ", el("strong", { text: exp.candidate_version }),
        " (candidate, " + pct(exp.share) + " of the users) vs ", el("strong", { text: exp.control_version }),
        " (control) — ", el("strong", { class: exp.status === "running" ? "ok" : exp.status === "guardrail"
          ? "error" : "", text: exp.status }), ", since " + when(exp.started_at) + " by " + (exp.started_by || "-")),
      exp.stopped_at ? el("p", { id: "experiment-stopped", text: "Stopped " + when(exp.stopped_at) + " by "
        + (exp.stopped_by || "-") + ": " + (exp.stop_reason || "no reason given") }) : "",
      serving ? el("p", { class: "muted", text: "This process answers the control with "
        + (serving.control || "no model") + " and the candidate with "
        + (serving.candidate_loaded ? serving.candidate : "nothing (not loaded yet)") + "." })
        : exp.status === "running" ? el("p", { class: "muted", text: "This process has not loaded it yet." }) : "");
    const arms = ["control", "candidate"].map((arm) => ({ arm, version: exp[arm + "_version"],
      ...((result && result.arms[arm]) || {}) }));
    fill("experiment-arms", table([
      ["arm", (a) => a.arm], ["version", (a) => a.version], ["users", (a) => num(a.users)],
      ["exposures", (a) => num(a.exposures)], ["swipes", (a) => num(a.decisions)],
      ["swipes/exposure", (a) => rate(a.decision_rate)],
      ["like-rate ± 1.96·se", (a) => rate(a.like_rate)
        + (isNum(a.like_rate_se) ? " ± " + rate(Z95 * a.like_rate_se) : "")],
    ], arms, { id: "experiment-arms-list" }));
    const comp = (result && result.comparison) || {};
    const verdict = (result && result.verdict) || "—";
    fill("experiment-comparison",
      el("p", {}, "Like-rate difference (candidate − control): ", el("strong", { text: signed(comp.difference, 4) }),
        "; 95% interval " + interval(comp.ci95, 4) + " (valid for one look), always-valid 95% interval "
        + interval(comp.always_valid, 4) + " (valid at every look)."),
      el("p", { id: "experiment-verdict" }, "Verdict: ", el("strong", { class: VERDICT[verdict] || "", text: verdict }),
        " — " + (comp.reason || "") + (result && result.guardrail_stopped ? "; the guardrail stopped it at this look"
          : "") + (result ? " (measured " + when(result.checked_at) + ")" : "")));
    const band = (arm) => (p) => {
      const r = p[arm + "_like_rate"], se = p[arm + "_like_rate_se"];
      return isNum(se) ? [r, Math.max(0, r - Z95 * se), Math.min(1, r + Z95 * se)] : [r, r, r]; // a rate: in [0, 1]
    };
    fill("experiment-plots",
      bandPlot(data.points, [{ name: "control " + exp.control_version, cls: "arm-control", get: band("control") },
        { name: "candidate " + exp.candidate_version, cls: "arm-candidate", get: band("candidate") }],
      { label: "like-rate", caption: "each arm's like-rate ± 1.96·se" }),
      bandPlot(data.points, [{ name: "candidate − control", cls: "arm-difference",
        get: (p) => [p.difference, ...(p.always_valid || [p.difference, p.difference])] }],
      { label: "difference", zero: true, caption: "difference with its always-valid 95% interval" }));
    return data;
  }

  function svgNode(tag, attrs, text) {
    const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // series over the looks' times: a line for the estimate, a shaded band between its low and high
  function bandPlot(points, series, opts) {
    const W = 320, H = 160, L = 46, R = 8, T = 8, B = 30;
    const times = points.map((p) => Date.parse(p.at));
    const drawn = series.map((s) => ({ ...s, rows: points.map((p, i) => [times[i], ...s.get(p)])
      .filter((row) => row.every(isNum)) }));
    const ys = drawn.flatMap((s) => s.rows.flatMap((r) => r.slice(1))).concat(opts.zero ? [0] : []);
    const svg = svgNode("svg", { class: "plot wide", viewBox: `0 0 ${W} ${H}`, role: "img",
      "aria-label": opts.caption, "data-points": Math.max(0, ...drawn.map((s) => s.rows.length)) });
    const looks = drawn.some((s) => s.rows.length);
    if (!looks) svg.append(svgNode("text", { x: W / 2, y: H / 2, "text-anchor": "middle" }, "no looks yet"));
    else {
      let lo = Math.min(...ys), hi = Math.max(...ys);
      const pad = (hi - lo) * 0.05 || 0.01;
      lo -= pad; hi += pad;
      const drawnTimes = drawn.flatMap((s) => s.rows.map((r) => r[0]));
      const t0 = Math.min(...drawnTimes), t1 = Math.max(...drawnTimes);
      const x = (t) => t1 > t0 ? L + ((t - t0) / (t1 - t0)) * (W - L - R) : (L + W - R) / 2;
      const y = (v) => T + ((hi - v) / (hi - lo)) * (H - T - B);
      svg.append(svgNode("polyline", { class: "axis", points: `${L},${T} ${L},${H - B} ${W - R},${H - B}` }));
      for (const v of [lo + pad, (lo + hi) / 2, hi - pad]) {
        svg.append(svgNode("text", { x: L - 3, y: y(v) + 3, "text-anchor": "end" }, num(v, 3)));
      }
      if (opts.zero && lo < 0 && hi > 0) {
        svg.append(svgNode("line", { class: "zero", x1: L, x2: W - R, y1: y(0), y2: y(0) }));
      }
      const stamp = (t) => t1 - t0 < 86400e3 ? when(t).slice(11, 19) : when(t).slice(5, 16); // the time, or the day
      svg.append(svgNode("text", { x: L, y: H - B + 11 }, stamp(t0)));
      if (t1 > t0) svg.append(svgNode("text", { x: W - R, y: H - B + 11, "text-anchor": "end" }, stamp(t1)));
      svg.append(svgNode("text", { x: (L + W - R) / 2, y: H - 3, "text-anchor": "middle" }, "time of the look (UTC)"));
      svg.append(svgNode("text", { x: -(T + H - B) / 2, y: 10, "text-anchor": "middle", transform: "rotate(-90)" },
        opts.label));
      for (const s of drawn) {
        if (!s.rows.length) continue;
        const band = s.rows.map((r) => x(r[0]) + "," + y(r[3])).concat(s.rows.slice().reverse()
          .map((r) => x(r[0]) + "," + y(r[2])));
        svg.append(svgNode("polygon", { class: "band " + s.cls, points: band.join(" ") }));
        svg.append(svgNode("polyline", { class: "line " + s.cls, points: s.rows.map((r) => x(r[0]) + "," + y(r[1]))
          .join(" ") }));
        for (const r of s.rows) svg.append(svgNode("circle", { class: s.cls, cx: x(r[0]), cy: y(r[1]), r: 1.8 }));
      }
    }
    const legend = drawn.map((s) => el("span", { class: "legend " + s.cls, text: s.name + ": "
      + (s.rows.length ? num(s.rows[s.rows.length - 1][1], 4) : "—") }));
    return el("figure", {}, svg, el("figcaption", {}, opts.caption + " (" + points.length + " looks) ", ...legend));
  }

  function askExperiment(text, run) {
    pending = run;
    fill("experiment-confirm-text", text);
    document.getElementById("experiment-confirm").hidden = false;
  }

  function askStart() {
    const candidate = document.getElementById("experiment-candidate").value;
    const share = Number(document.getElementById("experiment-share").value);
    if (!candidate) return;
    const active = document.body.dataset.active || "none";
    askExperiment("Start an experiment: " + candidate + " answers " + pct(share) + " of the users, " + active
      + " the rest? Every server loads " + candidate + " beside the active version within a second.", async () => {
      const done = await call("/v1/admin/experiment", { method: "POST", body: { candidate, share } });
      const e = done.experiment;
      return "Experiment #" + e.id + " started: " + e.candidate_version + " answers " + pct(e.share) + " of the users.";
    });
  }

  function askStop(promote) {
    if (!shown || shown.status !== "running") return;
    const e = shown;
    askExperiment(promote
      ? "Stop experiment #" + e.id + " and make " + e.candidate_version + " the active version instead of "
        + e.control_version + "? Every server switches within a second."
      : "Stop experiment #" + e.id + " (" + e.candidate_version + " vs " + e.control_version + ")? Every user gets "
        + e.control_version + " again.", async () => {
      const done = await call("/v1/admin/experiment/stop", { method: "POST", body: { promote } });
      return "Experiment #" + done.experiment.id + " " + done.experiment.status + "; this process serves "
        + (done.serving || "no model") + ".";
    });
  }

  async function confirmExperiment() {
    document.getElementById("experiment-confirm").hidden = true;
    const run = pending;
    pending = null;
    if (!run) return;
    fill("experiment-message", "working …");
    try {
      fill("experiment-message", el("span", { class: "ok", text: await run() }));
    } catch (error) {
      if (error.status === 401 || error.status === 403) { signedOut("Signed out: " + error.message); return; }
      fill("experiment-message", el("span", { class: "error", text: error.message }));
    }
    await Promise.allSettled([guard("experiment-summary", experiment()), guard("versions-table", versions())]);
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
    document.getElementById("experiment-form").addEventListener("submit", (e) => { e.preventDefault(); askStart(); });
    document.getElementById("experiment-stop").addEventListener("click", () => askStop(false));
    document.getElementById("experiment-promote").addEventListener("click", () => askStop(true));
    document.getElementById("experiment-yes").addEventListener("click", confirmExperiment);
    document.getElementById("experiment-no").addEventListener("click", () => {
      pending = null;
      document.getElementById("experiment-confirm").hidden = true;
    });
    document.getElementById("experiment-refresh").addEventListener("click", () => guard("experiment-summary",
      experiment()));
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
