"use strict";
// Shared by the console and the try page: DOM building (text only, never HTML from data), API calls with the
// bearer token, formatting. No dependencies, no build step.
const TT = (() => {
  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null) continue;
      if (k === "class") e.className = v;
      else if (k === "text") e.textContent = v;
      else if (k.startsWith("data-") || k === "title" || k === "role") e.setAttribute(k, v);
      else e[k] = v;
    }
    for (const c of children) if (c !== undefined && c !== null) e.append(c instanceof Node ? c : String(c));
    return e;
  }

  async function api(path, token, options) {
    const opts = options || {};
    const headers = { Authorization: "Bearer " + token };
    if (opts.body !== undefined) headers["Content-Type"] = "application/json";
    const response = await fetch(path, {
      method: opts.method || "GET", headers, cache: "no-store",
      body: opts.body === undefined ? undefined : JSON.stringify(opts.body),
    });
    let data = null;
    try { data = await response.json(); } catch (e) { data = null; }
    if (!response.ok) {
      const error = new Error((data && data.message) || "HTTP " + response.status);
      error.status = response.status;
      error.code = data && data.error;
      throw error;
    }
    return data;
  }

  function when(value) {
    return value ? new Date(value).toISOString().replace("T", " ").slice(0, 19) + " UTC" : "—";
  }

  function num(value, digits) {
    if (typeof value !== "number") return value === null || value === undefined ? "—" : String(value);
    return Number.isInteger(value) ? value.toLocaleString("en") : value.toFixed(digits === undefined ? 3 : digits);
  }

  function table(columns, rows, attrs) {
    const head = el("tr", {}, ...columns.map((c) => el("th", { text: c[0] })));
    const body = rows.map((row) => el("tr", {}, ...columns.map((c) => {
      const value = c[1](row);
      return el("td", {}, value instanceof Node ? value : value === null || value === undefined ? "—" : String(value));
    })));
    if (!rows.length) body.push(el("tr", {}, el("td", { colSpan: columns.length, class: "empty", text: "none" })));
    return el("table", attrs || {}, el("thead", {}, head), el("tbody", {}, ...body));
  }

  function thumb(url, title) {
    const box = el("div", { class: "thumb" });
    const letter = el("span", { class: "placeholder", text: (title || "?").trim().slice(0, 1).toUpperCase() });
    box.append(letter);
    if (url && /^https?:\/\//.test(url)) {
      const img = el("img", { alt: "", loading: "lazy", referrerPolicy: "no-referrer" });
      img.onload = () => { letter.hidden = true; };
      img.onerror = () => { img.remove(); };
      img.src = url;
      box.append(img);
    }
    return box;
  }

  function fill(id, ...children) {
    const node = document.getElementById(id);
    node.replaceChildren(...children);
    return node;
  }

  return { el, api, when, num, table, thumb, fill };
})();
