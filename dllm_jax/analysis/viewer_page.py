"""The viewer page's HTML, CSS and script (see ``viewer.py``); no external resources.

The data arrives as JSON in a ``<script type="application/json">`` element with ``<``, ``>``
and ``&`` written as ``\\u003c``, ``\\u003e``, ``\\u0026``, so no text in it can close the
element; the script reads it with ``JSON.parse`` and writes every token and label with
``textContent``. ``#step=N`` in the URL opens the page at step ``N``; ``#pos=R.I`` (or
``#step=N&pos=R.I``) opens it with position ``I`` of batch row ``R`` selected.
"""

from __future__ import annotations

import html
import json

CSS = """
[hidden]{display:none!important}
body{font:14px/1.4 system-ui,sans-serif;margin:16px;color:#222;background:#fafafa}
h1{font-size:18px;margin:0 0 4px}h2{font-size:14px;margin:0 0 6px}
.note,.summary,.prompt{color:#555;margin:4px 0}
#controls{position:sticky;top:0;background:#fafafa;padding:6px 0;display:flex;gap:10px;
 align-items:center;z-index:1}
#controls input{flex:1;max-width:520px}
#rows{display:grid;grid-template-columns:repeat(auto-fit,minmax(420px,1fr));gap:12px}
.sample{background:#fff;border:1px solid #ddd;border-radius:6px;padding:10px}
.count{font-weight:normal;color:#777}
.tokens{font:15px/2 ui-monospace,monospace;margin-bottom:6px}
.tok{white-space:pre;padding:1px 3px;margin:0 1px;border-radius:3px;background:#eee}
.tok.masked{color:#aaa;background:#f3f3f3}
.tok.now{outline:2px solid #333}
.block{display:inline-block;margin:0 6px 4px 0;vertical-align:top}
.meter{display:block;height:6px;background:#eee;border-radius:3px;margin-top:2px}
.meter span{display:block;height:6px;background:#4a7;border-radius:3px}
.acc{display:block;font-size:11px;color:#555}
.grad{display:inline-block;width:90px;height:10px;vertical-align:middle;border-radius:2px;
 background:linear-gradient(to right,hsl(0,70%,80%),hsl(60,70%,80%),hsl(120,70%,80%))}
svg.chart{width:100%;height:auto;cursor:pointer}
svg .zone{fill:rgba(220,0,0,.15)}svg .empty{fill:rgba(0,0,0,.06)}
svg .cursor{fill:rgba(0,0,255,.12);stroke:#33c;stroke-width:.5}
svg .curve{fill:none;stroke-width:1.5}svg .base{stroke:#ccc}
svg text{font-size:10px;fill:#444}svg .tick{stroke:#999}
.tok.sel{box-shadow:0 0 0 2px #36c}
.details{font:12px/1.4 ui-monospace,monospace;white-space:pre-wrap;color:#333;min-height:1.4em;
 background:#f6f6f6;border-radius:4px;padding:4px 6px;margin-bottom:6px}
"""

SCRIPT = r"""
"use strict";
(() => {
const D = JSON.parse(document.getElementById("viewer-data").textContent);
const MASK = "\u2592", NS = "http://www.w3.org/2000/svg", T = D.num_steps;
const SERIES = [["H", "H_t entropy", "#1f77b4"], ["CM", "CM_t margin", "#ff7f0e"],
                ["RoEC", "RoEC_t", "#2ca02c"]];
const W = 600, LM = 64, RM = 6, CH = 40, GAP = 8, AXIS = 16;
const $ = (id) => document.getElementById(id);
const fmt = (x, d = 3) => (x === null || x === undefined ? "-" : Number(x).toFixed(d));
const colour = (c) => `hsl(${Math.round(120 * c)},70%,80%)`;
const views = [];

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = String(text);
  return e;
}
function sv(tag, attrs, parent) {
  const e = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (parent) parent.appendChild(e);
  return e;
}

function detailLines(r, i) {
  const lines = [`position ${i} (sequence index ${D.prompt_length + i}), id ${r.ids[i]}: ` +
                 r.tokens[i]];
  if (r.step) lines.push(r.step[i] >= 0 ? `committed at step ${r.step[i]}, confidence ` +
                         fmt(r.conf[i]) : "never committed");
  if (r.acceptance) {
    const b = Math.floor(i / r.block_length);
    lines.push(`block ${b}: acceptance ${fmt(r.acceptance[b], 2)}`);
  }
  if (r.alts) {
    lines.push("top alternatives when committed:");
    for (const [t, p] of r.alts[i]) lines.push(`  ${fmt(p)}  ${t}`);
  }
  return lines;
}
function select(view, i) {
  view.cells.forEach((c, k) => c.classList.toggle("sel", k === i));
  view.details.replaceChildren(...detailLines(view.row, i).map((l) => el("div", "", l)));
}

function tokenCells(view, box) {
  const r = view.row;
  const cells = r.tokens.map((t, i) => {
    const c = el("span", "tok", t);
    c.dataset.pos = i;
    if (r.step) c.dataset.step = r.step[i];
    c.addEventListener("mouseenter", () => select(view, i));
    c.addEventListener("click", () => select(view, i));
    return c;
  });
  if (!r.acceptance) {
    box.append(...cells);
    return cells;
  }
  r.acceptance.forEach((a, b) => {  // IMH: tokens grouped by block, acceptance under each
    const blk = el("span", "block");
    blk.dataset.block = b;
    blk.append(...cells.slice(b * r.block_length, (b + 1) * r.block_length));
    const meter = el("span", "meter"), bar = el("span");
    bar.style.width = `${Math.round(100 * (a || 0))}%`;
    meter.append(bar);
    blk.append(meter, el("span", "acc", `block ${b}: acceptance ${fmt(a, 2)}`));
    box.append(blk);
  });
  return cells;
}

function niceStep(n) {
  for (let m = 1; ; m *= 10) for (const k of [1, 2, 5]) if (k * m * 8 >= n) return k * m;
}

function chart(r, parent, view) {
  const bottom = SERIES.length * (CH + GAP) - GAP;
  const s = sv("svg", {viewBox: `0 0 ${W} ${bottom + AXIS}`, class: "chart"}, parent);
  const x = (t) => (LM + (t / T) * (W - LM - RM)).toFixed(1);
  const band = (a, b, cls, label) => {
    const e = sv("rect", {x: x(a), y: 0, width: x(b) - x(a), height: bottom, class: cls,
                          "data-start": a, "data-end": b}, s);
    sv("title", {}, e).textContent = label;
  };
  r.valid.forEach((v, t) => { if (!v) band(t, t + 1, "empty", `step ${t}: committed nothing`); });
  for (const [a, b, peak] of r.zones) {
    band(a, b, "zone", `confusion zone: steps ${a} to ${b - 1}, peak z ${fmt(peak, 2)}`);
  }
  SERIES.forEach(([key, label, col], k) => {
    const y0 = k * (CH + GAP), vals = r.curves[key];
    const max = Math.max(1e-9, ...vals.filter((v) => v !== null));
    const y = (v) => (y0 + CH - (v / max) * CH).toFixed(1);
    sv("line", {x1: LM, x2: W - RM, y1: y0 + CH, y2: y0 + CH, class: "base"}, s);
    sv("text", {x: 2, y: y0 + 12}, s).textContent = label.split(" ")[0];
    sv("text", {x: 2, y: y0 + 24}, s).textContent = `max ${fmt(max, 2)}`;
    let d = "", prev = false;
    vals.forEach((v, t) => {
      if (v === null) { prev = false; return; }
      d += `${prev ? "V" : `M${x(t)},`}${y(v)}H${x(t + 1)}`;
      prev = true;
    });
    sv("path", {d, stroke: col, class: "curve", "data-series": key}, s);
  });
  const every = niceStep(T);
  for (let t = 0; t <= T; t += every) {
    sv("line", {x1: x(t), x2: x(t), y1: bottom, y2: bottom + 4, class: "tick"}, s);
    sv("text", {x: x(t), y: bottom + 14, "text-anchor": "middle"}, s).textContent = t;
  }
  view.cursor = sv("rect", {x: x(0), y: 0, width: x(1) - x(0), height: bottom,
                            class: "cursor"}, s);
  view.x = x;
  s.addEventListener("click", (ev) => {
    const box = s.getBoundingClientRect();
    const px = ((ev.clientX - box.left) * W) / box.width;
    setStep(Math.floor(((px - LM) / (W - LM - RM)) * T));
  });
}

function setStep(t) {
  t = Math.max(0, Math.min(T - 1, t));
  $("step").value = t;
  $("steplabel").textContent = `step ${t} (0 to ${T - 1})`;
  for (const v of views) {
    let n = 0;
    v.cells.forEach((c, i) => {
      const s = v.row.step[i], shown = s >= 0 && s <= t;
      c.textContent = shown ? v.row.tokens[i] : MASK;
      c.classList.toggle("masked", !shown);
      c.classList.toggle("now", s === t);
      c.style.background = shown ? colour(v.row.conf[i]) : "";
      n += shown;
    });
    v.count.textContent = ` ${n}/${v.cells.length} committed`;
    v.cursor.setAttribute("x", v.x(t));
  }
}

let timer = null;
function stop() {
  clearInterval(timer);
  timer = null;
  $("play").textContent = "\u25B6 play";
}
function play() {
  if (timer) return stop();
  if (+$("step").value >= T - 1) setStep(0);
  $("play").textContent = "\u275A\u275A pause";
  timer = setInterval(() => {
    const t = +$("step").value + 1;
    if (t >= T) stop(); else setStep(t);
  }, Math.min(400, Math.max(60, 6000 / T)));
}

function build() {
  $("title").textContent = D.title;
  const shared = new Set(D.rows.map((r) => r.prompt)).size === 1;
  const parts = [`${D.rows.length} sample(s)`, `${D.gen_length} generated positions`];
  if (D.kind === "trajectory") parts.push(`${T} steps`, `confusion zones: z > ${D.threshold}`);
  $("summary").textContent = parts.join(" \u00B7 ");
  $("note").textContent = D.note;
  if (shared) $("prompt").textContent = `prompt: ${D.rows[0].prompt}`;
  for (const r of D.rows) {
    const sec = el("section", "sample"), head = el("h2", "", `sample ${r.row}`);
    const view = {row: r, count: el("span", "count"), details: el("div", "details",
                                                      "hover or click a token for its details")};
    sec.dataset.row = r.row;
    head.append(view.count);
    sec.append(head);
    if (!shared) sec.append(el("p", "prompt", `prompt: ${r.prompt}`));
    const box = el("div", "tokens");
    sec.append(box);
    view.cells = tokenCells(view, box);
    if (r.log_prob !== undefined) sec.append(el("p", "note", `log p: ${fmt(r.log_prob, 2)}`));
    sec.append(view.details);
    if (D.kind === "trajectory") chart(r, sec, view);
    views.push(view);
    $("rows").append(sec);
  }
  const hash = new URLSearchParams(location.hash.slice(1));
  const pos = /^(\d+)\.(\d+)$/.exec(hash.get("pos") || "");
  const picked = pos && views.find((v) => v.row.row === +pos[1]);
  if (picked && +pos[2] < picked.cells.length) select(picked, +pos[2]);
  if (D.kind !== "trajectory") {
    $("controls").hidden = true;
    return;
  }
  $("step").max = T - 1;
  $("step").addEventListener("input", (ev) => { stop(); setStep(+ev.target.value); });
  $("play").addEventListener("click", play);
  const step = /^\d+$/.test(hash.get("step") || "") ? +hash.get("step") : T - 1;
  setStep(step);
}
build();
})();
"""

BODY = """<header><h1 id="title"></h1><p class="summary" id="summary"></p>
<p class="note" id="note"></p><p class="prompt" id="prompt"></p></header>
<div id="controls"><button id="play" type="button">\u25B6 play</button>
<input id="step" type="range" min="0" value="0" aria-label="step">
<span id="steplabel"></span>
<span>confidence 0 <span class="grad"></span> 1</span>
<span>\u2592 masked</span></div>
<main id="rows"></main>
<noscript>This page draws itself with JavaScript.</noscript>"""


def inline_json(data: dict) -> str:
    """``data`` as JSON safe inside a ``<script>`` element (no ``<``, ``>``, ``&``)."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render(data: dict) -> str:
    """The whole page for :func:`dllm_jax.analysis.viewer.viewer_data`'s ``data``."""
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width,initial-scale=1">\n'
            f"<title>{html.escape(data['title'])}</title>\n<style>{CSS}</style></head>\n"
            f"<body>\n{BODY}\n"
            f'<script type="application/json" id="viewer-data">{inline_json(data)}</script>\n'
            f"<script>{SCRIPT}</script>\n</body></html>\n")
