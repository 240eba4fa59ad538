"use strict";
// saelab explorer: index sorting/search/filters/paging, token colouring, live tools (server mode only).
function esc(s) { return String(s).replace(/[&<>"']/g, c => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c])); }
function shown(t) { return t.replace(/\n/g, "⏎\n"); }
function fmt(v) { return v === 0 ? "0" : (Math.abs(v) >= 0.01 && Math.abs(v) < 1e4 ? v.toFixed(3) : v.toExponential(2)); }
function tokenSpans(tokens, acts, scale, maxIndex) {
  return tokens.map((t, i) => {
    const a = acts[i], alpha = scale > 0 ? Math.max(0, Math.min(1, a / scale)) : 0;
    const cls = i === maxIndex ? "tok max" : "tok";
    return `<span class="${cls}" style="background: rgba(255, 120, 0, ${alpha.toFixed(3)})" title="${a}">${esc(shown(t))}</span>`;
  }).join("");
}
function exampleHTML(e, scale) {
  return `<div class="example"><span class="value">${e[3].toFixed(3)}</span>${tokenSpans(e[0], e[1], scale, e[2])}</div>`;
}
function setupExamples() {
  const node = document.getElementById("example-data");
  if (!node) return;
  const data = JSON.parse(node.textContent);
  if (data.top.length) document.getElementById("top-examples").innerHTML = data.top.map(e => exampleHTML(e, data.scale)).join("");
  document.getElementById("quantile-examples").innerHTML = data.quantiles.map(([band, examples]) =>
    `<h3 class="muted">quantile band ${band + 1} of ${data.bands}${band + 1 === data.bands ? " (highest)" : ""}</h3>` +
    examples.map(e => exampleHTML(e, data.scale)).join("")).join("");
}
function setupIndex() {
  const dataNode = document.getElementById("latent-data");
  if (!dataNode) return;
  const cfg = JSON.parse(dataNode.textContent);
  const rows = cfg.rows, body = document.getElementById("latent-rows"), count = document.getElementById("count");
  const search = document.getElementById("search"), info = document.getElementById("page-info");
  const hideDead = document.getElementById("hide-dead"), hideDense = document.getElementById("hide-dense");
  const buttons = {first: "page-first", prev: "page-prev", next: "page-next", last: "page-last"};
  Object.keys(buttons).forEach(k => { buttons[k] = document.getElementById(buttons[k]); });
  const isDead = r => r[1] === 0, isDense = r => r[1] > cfg.dense_threshold;
  let key = "frequency", descending = true, page = 0, hits = [];
  const columns = {latent: 0, frequency: 1, max_activation: 2, mean_activation: 3};
  function filter() {  // search, dead/dense filters and sort; back to the first page
    const words = search.value.trim().toLowerCase().split(/\s+/).filter(Boolean);
    const found = rows.filter(r => words.every(w => String(r[0]) === w || (r[4] + " " + r[5]).toLowerCase().includes(w)));
    hits = found.filter(r => !(hideDead.checked && isDead(r)) && !(hideDense.checked && isDense(r)));
    const c = columns[key];
    hits.sort((a, b) => (descending ? b[c] - a[c] : a[c] - b[c]) || a[0] - b[0]);
    const hidden = [];
    if (hideDead.checked) hidden.push(`${found.filter(isDead).length} dead`);
    if (hideDense.checked) hidden.push(`${found.filter(isDense).length} dense`);
    count.textContent = `${hits.length} of ${rows.length} latents` + (hidden.length ? ` (hidden: ${hidden.join(", ")})` : "");
    page = 0; show();
  }
  function show() {  // the current page of hits
    const pages = Math.max(1, Math.ceil(hits.length / cfg.page_size));
    page = Math.min(Math.max(page, 0), pages - 1);
    const start = page * cfg.page_size, shown = hits.slice(start, start + cfg.page_size);
    info.textContent = `page ${page + 1} of ${pages}` + (shown.length ? ` (rows ${start + 1}–${start + shown.length})` : "");
    buttons.first.disabled = buttons.prev.disabled = page === 0;
    buttons.next.disabled = buttons.last.disabled = page === pages - 1;
    body.innerHTML = shown.map(r =>
      `<tr data-latent="${r[0]}"><td><a href="${cfg.href.replace("{i}", r[0])}">${r[0]}</a></td><td class="num">${fmt(r[1])}</td><td class="num">${fmt(r[2])}</td><td class="num">${fmt(r[3])}</td><td class="code">${esc(r[4])}</td><td>${esc(r[5])}</td></tr>`).join("");
  }
  document.querySelectorAll("th[data-key]").forEach(th => th.addEventListener("click", () => {
    descending = th.dataset.key === key ? !descending : th.dataset.key !== "latent";
    key = th.dataset.key; filter();
  }));
  search.addEventListener("input", filter);
  hideDead.addEventListener("change", filter);
  hideDense.addEventListener("change", filter);
  buttons.first.addEventListener("click", () => { page = 0; show(); });
  buttons.prev.addEventListener("click", () => { page -= 1; show(); });
  buttons.next.addEventListener("click", () => { page += 1; show(); });
  buttons.last.addEventListener("click", () => { page = Infinity; show(); });
  const q = new URLSearchParams(location.search).get("q");
  if (q) search.value = q;
  filter();
}
async function postJSON(url, body) {
  const response = await fetch(url, {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)});
  const data = await response.json();
  if (!response.ok) {
    const detail = Array.isArray(data.detail) ? data.detail.map(d => d.msg).join("; ") : data.detail;
    throw new Error(`${response.status}: ${detail}`);
  }
  return data;
}
function setupTools() {
  const analyze = document.getElementById("analyze-form");
  if (analyze) analyze.addEventListener("submit", async ev => {
    ev.preventDefault();
    const out = document.getElementById("analyze-out");
    out.textContent = "running…";
    try {
      const data = await postJSON("/api/analyze", {text: analyze.text.value, k: 5, include_dense: analyze.include_dense.checked});
      const dense = data.dense, verb = dense.excluded ? "left out" : "included";
      out.innerHTML = "<table><tr><th>#</th><th>token</th><th>top latents</th></tr>" + data.tokens.map(t =>
        `<tr><td>${t.position}</td><td class="code">${esc(shown(t.token))}</td><td>${t.latents.map(([i, v]) => `<a href="/latent/${i}">${i}</a> <span class="muted">${fmt(v)}</span>`).join(", ")}</td></tr>`).join("") + "</table>" +
        `<p class="muted" id="analyze-dense">Dense latents (fire on &gt; ${Number((dense.threshold * 100).toPrecision(6))}% of tokens) ${verb}: ` +
        (dense.latents.map(([i, f]) => `<a href="/latent/${i}">${i}</a> (${(f * 100).toFixed(1)}%)`).join(", ") || "none fired here") + "</p>";
    } catch (e) { out.innerHTML = `<span class="error">${esc(e.message)}</span>`; }
  });
  const steer = document.getElementById("steer-form");
  if (steer) steer.addEventListener("submit", async ev => {
    ev.preventDefault();
    const out = document.getElementById("steer-out");
    out.textContent = "generating…";
    try {
      const data = await postJSON("/api/steer", {prompt: steer.prompt.value, latent: Number(steer.latent.value),
        strength: Number(steer.strength.value), mode: steer.mode.value, max_new_tokens: Number(steer.max_new_tokens.value)});
      out.innerHTML = `<div class="side"><div><h2>without steering</h2><pre>${esc(data.baseline)}</pre></div><div><h2>steered (${esc(data.mode)} latent ${data.latent} × ${data.strength})</h2><pre>${esc(data.steered)}</pre></div></div>`;
    } catch (e) { out.innerHTML = `<span class="error">${esc(e.message)}</span>`; }
  });
}
function attributionGraph(report) {  // layered SVG: SAEs bottom to top, positions left to right, the prediction on top
  const key = n => `${n.site}/${n.position}/${n.latent}`, drawn = new Map();
  report.positions.forEach(p => p.latents.forEach(n => drawn.set(key(n), n)));
  report.edges.forEach(e => [e.from, e.to].forEach(n => { if (n.latent !== null && !drawn.has(key(n))) drawn.set(key(n), n); }));
  const positions = [...new Set([...drawn.values()].map(n => n.position))].sort((a, b) => a - b);
  const cell = {};  // (position, site) -> its nodes, in drawing order
  drawn.forEach(n => (cell[`${n.position}/${n.site}`] ??= []).push(n));
  const colW = 120, rowH = 90, sites = report.sites.length;
  const width = Math.max(1, positions.length) * colW + 80, height = (sites + 1) * rowH + 40, out = {x: width - 40, y: 30};
  const maxA = Math.max(1e-12, ...[...drawn.values()].map(n => Math.abs(n.attribution)));
  const maxE = Math.max(1e-12, ...report.edges.map(e => Math.abs(e.weight)));
  const at = {}, nodes = [], lines = [];
  drawn.forEach(n => {
    const row = cell[`${n.position}/${n.site}`], j = row.indexOf(n), c = positions.indexOf(n.position);
    const x = 40 + c * colW + (j + 0.5) * (colW - 20) / row.length, y = height - 30 - n.site * rowH - 20;
    at[key(n)] = {x, y};
    const colour = n.attribution >= 0 ? "#1f77b4" : "#d62728", w = 0.5 + 4 * Math.abs(n.attribution) / maxA;
    lines.push(`<line class="edge" x1="${x}" y1="${y}" x2="${out.x}" y2="${out.y}" stroke="${colour}" stroke-opacity="0.35" stroke-width="${w.toFixed(2)}"/>`);
    const circle = `<circle class="node" data-site="${n.site}" cx="${x}" cy="${y}" r="${(4 + 6 * Math.abs(n.attribution) / maxA).toFixed(1)}" fill="${colour}"><title>${esc(report.sites[n.site].hook)} latent ${n.latent} at ${esc(shown(n.token))}: ${fmt(n.attribution)}</title></circle>`;
    nodes.push(n.site === report.served_site ? `<a href="/latent/${n.latent}">${circle}</a>` : circle);
  });
  report.edges.forEach(e => {
    const a = at[key(e.from)], b = at[key(e.to)];
    if (a && b) lines.push(`<line class="circuit-edge" x1="${a.x}" y1="${a.y}" x2="${b.x}" y2="${b.y}" stroke="${e.weight >= 0 ? "#1f77b4" : "#d62728"}" stroke-width="${(0.5 + 5 * Math.abs(e.weight) / maxE).toFixed(2)}"><title>${fmt(e.weight)}</title></line>`);
  });
  const labels = positions.map((t, c) => `<text x="${40 + c * colW}" y="${height - 8}" font-size="11">${esc(shown(report.positions[t].token)).slice(0, 14)}</text>`);
  const rows = report.sites.map((s, i) => `<text x="2" y="${height - 30 - i * rowH - 34}" font-size="10" fill="#777">${esc(s.write)}</text>`);
  return `<svg id="attribute-graph" width="${width}" height="${height}">${lines.join("")}${nodes.join("")}${rows.join("")}` +
    `<circle cx="${out.x}" cy="${out.y}" r="10" fill="#2ca02c"><title>m = ${fmt(report.metric.value)}</title></circle>` +
    `<text x="${out.x - 60}" y="${out.y - 14}" font-size="12">${esc(JSON.stringify(report.metric.target))}</text>${labels.join("")}</svg>`;
}
function setupAttribution() {
  const form = document.getElementById("attribute-form");
  if (form) form.addEventListener("submit", async ev => {
    ev.preventDefault();
    const out = document.getElementById("attribute-out");
    out.textContent = "running…";
    try {
      const data = await postJSON("/api/attribute", {prompt: form.prompt.value, target: form.target.value || null, top: 3});
      out.innerHTML = `<p id="attribute-metric">m = log p(${esc(JSON.stringify(data.metric.target))}) = ${fmt(data.metric.value)}</p>` +
        "<table id=\"attribute-table\"><tr><th>#</th><th>token</th><th>top latents: attribution</th><th>error node</th></tr>" + data.positions.map(p =>
        `<tr><td>${p.position}</td><td class="code">${esc(shown(p.token))}</td><td>${p.latents.map(n => (n.site === data.served_site ? `<a href="/latent/${n.latent}">${n.latent}</a>` : `${esc(data.sites[n.site].write)} ${n.latent}`) + ` <span class="muted">${fmt(n.attribution)}</span>${n.explanation ? " " + esc(n.explanation) : ""}`).join(", ")}</td><td>${p.errors.map(fmt).join(" / ")}</td></tr>`).join("") +
        "</table><div class=\"graph-scroll\">" + attributionGraph(data) + "</div>";
    } catch (e) { out.innerHTML = `<span class="error">${esc(e.message)}</span>`; }
  });
}
document.addEventListener("DOMContentLoaded", () => { setupIndex(); setupExamples(); setupTools(); setupAttribution(); });
