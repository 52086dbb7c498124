// attnkit attention view: reads the JSON in #attnkit-data and builds every view with DOM, SVG and canvas
// calls. Token text only ever goes through textContent, never innerHTML: any token shows as plain text.
"use strict";
(function () {
  const SVG_NS = "http://www.w3.org/2000/svg";  // a namespace name, not a URL that is fetched
  const MIN_LINK = 0.01;      // head-view links lighter than this are invisible, so not drawn
  const LINK_BUDGET = 30000;  // at most about this many lines in the head view (each row keeps its top links)
  const ROW = 18;             // head-view row height (px)
  const LEFT_X = 170, RIGHT_X = 430, SVG_WIDTH = 600;
  const TOP_BARS = 30;        // rollout bars shown
  const MASKED = [222, 222, 222];  // a cell a decoder's query cannot see: grey, apart from the white of weight 0
  const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                   "#bcbd22", "#17becf", "#393b79", "#ad494a"];

  // ---- data ---------------------------------------------------------------------------------------------
  // A packed tensor: little-endian uint8 / uint16 of weight * scale, base64; decoded to a flat Float32Array.
  function decode(packed) {
    const bytes = atob(packed.data);
    const count = packed.shape.reduce((a, b) => a * b, 1);
    const values = new Float32Array(count);
    if (packed.bytes === 1) {
      for (let i = 0; i < count; i++) values[i] = bytes.charCodeAt(i) / packed.scale;
    } else {
      for (let i = 0; i < count; i++) {
        values[i] = (bytes.charCodeAt(2 * i) | (bytes.charCodeAt(2 * i + 1) << 8)) / packed.scale;
      }
    }
    return { shape: packed.shape, values: values };
  }

  const data = JSON.parse(document.getElementById("attnkit-data").textContent);
  const tokens = data.tokens, N = tokens.length, M = data.bins.length;
  const maps = decode(data.maps);            // (L, H, M, M)
  const L = maps.shape[0], H = maps.shape[1];
  const focusRows = decode(data.focusRows);  // (L, H, N)
  const rollout = decode(data.rollout);      // (M, M)
  const rolloutRow = decode(data.rolloutRow);  // (N,)
  const rolloutRest = data.rolloutRest ? decode(data.rolloutRest) : null;  // (N,) decoders: without the first token
  const focusBin = data.bins.findIndex((b) => b[0] <= data.focus && data.focus < b[1]);
  // (M, M) 1 where a decoder's query bin sees none of the key bin (every key after every query): masked, not 0
  const masked = new Uint8Array(M * M);
  if (data.causal) {
    for (let q = 0; q < M; q++) for (let k = 0; k < M; k++) masked[q * M + k] = data.bins[k][0] >= data.bins[q][1];
  }
  const SEES_EARLIER = "in a decoder a token attends only to itself and earlier tokens";

  function mapOf(layer, head) {  // (M, M) view of one head's map
    const start = (layer * H + head) * M * M;
    return maps.values.subarray(start, start + M * M);
  }

  // ---- small helpers ------------------------------------------------------------------------------------
  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function svgEl(tag, attrs) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const name in attrs) node.setAttribute(name, attrs[name]);
    return node;
  }

  function headColour(head) {
    return head < PALETTE.length ? PALETTE[head] : "hsl(" + ((head * 137.5) % 360) + ", 60%, 45%)";
  }

  function quoted(i) { return "\u201c" + tokens[i] + "\u201d"; }

  function fillSelect(select, count, value) {
    for (let i = 0; i < count; i++) select.appendChild(el("option", "", String(i))).value = String(i);
    select.value = String(value);
  }

  const tip = document.getElementById("tip");
  function showTip(event, text) {
    tip.textContent = text;
    tip.hidden = false;
    tip.style.left = event.clientX + 14 + "px";
    tip.style.top = event.clientY + 14 + "px";
  }
  function hideTip() { tip.hidden = true; }

  // ---- header -------------------------------------------------------------------------------------------
  function renderHeader() {
    document.title = "attnkit: " + data.model;
    document.getElementById("model").textContent = data.model + " \u2014 " + L + " layers \u00d7 " + H +
      " heads, " + (data.causal ? "decoder (causal)" : "encoder");
    document.getElementById("text").textContent = data.text;
    document.getElementById("focus").textContent = quoted(data.focus) + " (token " + data.focus + ")" +
      (data.causal ? "; a decoder: it attends to the " + data.visible + " tokens up to it (0\u2013" + data.focus +
                     "), none after" : "");
    document.getElementById("shape").textContent = N + " tokens" +
      (data.pooled ? ", heatmaps pooled into " + M + " token ranges" : "");
    const notes = document.getElementById("notes");
    for (const note of data.notes) notes.appendChild(el("li", "", note));
    if (data.sink) {
      const sink = document.getElementById("sink");
      sink.textContent = data.sink;
      sink.hidden = false;
    }
  }

  // ---- the focus token's table, per layer (the terminal's) ---------------------------------------------
  function renderTable() {
    const table = document.getElementById("focus-table");
    const header = table.appendChild(el("thead")).appendChild(el("tr"));
    for (const name of data.table.header) header.appendChild(el("th", "", name));
    const body = table.appendChild(el("tbody"));
    for (const row of data.table.rows) {
      const line = body.appendChild(el("tr"));
      for (const cell of row) line.appendChild(el("td", "", cell));
    }
    document.getElementById("table-hint").textContent = "The tokens " + quoted(data.focus) +
      " attends to most in each layer (mean over heads" +
      (data.causal ? ", among the " + data.visible + " tokens up to it" : "") + ")" +
      (data.sink ? "; the first token's weight, then the others ranked without it." : ".");
  }

  // ---- heatmaps -----------------------------------------------------------------------------------------
  // White to dark blue, by sqrt(weight) so that the many small weights of a long row stay visible.
  function colour(v) {
    const t = Math.sqrt(Math.min(1, Math.max(0, v)));
    return t < 0.5
      ? [255 - (255 - 107) * 2 * t, 255 - (255 - 174) * 2 * t, 255 - (255 - 214) * 2 * t]
      : [107 - (107 - 8) * (2 * t - 1), 174 - (174 - 48) * (2 * t - 1), 214 - (214 - 107) * (2 * t - 1)];
  }

  function paint(canvas, values, size) {  // values: (M, M), one pixel per cell; CSS scales it up
    canvas.width = size;
    canvas.height = size;
    const context = canvas.getContext("2d");
    const image = context.createImageData(size, size);
    for (let i = 0; i < size * size; i++) {
      const c = masked[i] ? MASKED : colour(values[i]);
      image.data[4 * i] = c[0];
      image.data[4 * i + 1] = c[1];
      image.data[4 * i + 2] = c[2];
      image.data[4 * i + 3] = 255;
    }
    context.putImageData(image, 0, 0);
  }

  // An M x M heatmap with the bin labels on both axes (every k-th when cells are small); describe(q, k, v)
  // gives the hover text for query bin q, key bin k. Returns show(values), which paints (M, M) values.
  function heatmap(container, describe) {
    const cell = Math.max(4, Math.min(24, Math.floor(560 / M)));
    const every = Math.ceil(11 / cell);
    const grid = el("div", "heatmap");
    const cols = el("div", "cols"), rows = el("div", "rows");
    for (let i = 0; i < M; i++) {
      const text = i % every === 0 ? data.binLabels[i] : "";
      const klass = "label" + (i === focusBin ? " focus" : "");
      cols.appendChild(el("div", klass, text)).style.width = cell + "px";
      const row = rows.appendChild(el("div", klass, text));
      row.style.height = cell + "px";
      row.style.lineHeight = cell + "px";
    }
    const canvas = el("canvas");
    canvas.style.width = canvas.style.height = M * cell + "px";
    grid.append(el("div"), cols, rows, canvas);
    container.appendChild(grid);
    let current = null;
    canvas.addEventListener("mousemove", (event) => {
      const q = Math.floor(event.offsetY / canvas.clientHeight * M);
      const k = Math.floor(event.offsetX / canvas.clientWidth * M);
      if (!current || q < 0 || q >= M || k < 0 || k >= M) return;
      showTip(event, masked[q * M + k]
        ? data.binLabels[q] + " cannot see " + data.binLabels[k] + ": masked (" + SEES_EARLIER + ")"
        : describe(q, k, current[q * M + k]));
    });
    canvas.addEventListener("mouseleave", hideTip);
    return (values) => { current = values; paint(canvas, values, M); };
  }

  // ---- detail and model views ---------------------------------------------------------------------------
  const detail = {
    layerSelect: document.getElementById("detail-layer"),
    headSelect: document.getElementById("detail-head"),
  };

  function selectDetail(layer, head) {
    detail.layer = layer;
    detail.head = head;
    detail.layerSelect.value = String(layer);
    detail.headSelect.value = String(head);
    document.getElementById("detail-label").textContent = "layer " + layer + ", head " + head;
    detail.show(mapOf(layer, head));
    for (const thumb of document.querySelectorAll("canvas.thumb")) {
      thumb.classList.toggle("selected", +thumb.dataset.layer === layer && +thumb.dataset.head === head);
    }
  }

  function renderDetail() {
    detail.show = heatmap(document.getElementById("detail-map"), (q, k, v) =>
      "query " + data.binLabels[q] + " \u2192 key " + data.binLabels[k] + ": " + v.toFixed(3));
    fillSelect(detail.layerSelect, L, data.layer);
    fillSelect(detail.headSelect, H, data.head);
    detail.layerSelect.addEventListener("change", () => selectDetail(+detail.layerSelect.value, detail.head));
    detail.headSelect.addEventListener("change", () => selectDetail(detail.layer, +detail.headSelect.value));
  }

  function renderModelView() {
    if (data.causal) {
      document.getElementById("model-hint").append(" Grey cells are masked: " + SEES_EARLIER + ".");
    }
    const grid = document.getElementById("model-grid");
    grid.style.gridTemplateColumns = "auto repeat(" + H + ", auto)";
    grid.appendChild(el("div"));
    for (let h = 0; h < H; h++) grid.appendChild(el("div", "axis", "head " + h));
    for (let l = 0; l < L; l++) {
      grid.appendChild(el("div", "axis", "layer " + l));
      for (let h = 0; h < H; h++) {
        const thumb = el("canvas", "thumb");
        thumb.dataset.layer = String(l);
        thumb.dataset.head = String(h);
        thumb.title = "layer " + l + ", head " + h;
        paint(thumb, mapOf(l, h), M);
        thumb.addEventListener("click", () => selectDetail(l, h));
        grid.appendChild(thumb);
      }
    }
  }

  // ---- head view ----------------------------------------------------------------------------------------
  // Left column: queries; right column: keys; a line per (head, query, key) with opacity = weight. Pooled
  // texts draw only the focus token's full-resolution row (never N^2 lines).
  const head = { layer: data.layer, on: new Array(H).fill(true), linksFrom: [], linksTo: [] };
  const svg = document.getElementById("head-svg");
  const linkGroup = svgEl("g", { class: "links" });

  function rowWeights(layer, h, query) {  // (N,) weights of query's row, or null when not available
    if (!data.pooled) return mapOf(layer, h).subarray(query * N, (query + 1) * N);
    if (query !== data.focus) return null;
    const start = (layer * H + h) * N;
    return focusRows.values.subarray(start, start + N);
  }

  function y(i) { return i * ROW + ROW / 2 + 4; }

  function drawLinks() {
    linkGroup.replaceChildren();
    head.linksFrom = tokens.map(() => []);
    head.linksTo = tokens.map(() => []);
    const queries = data.pooled ? [data.focus] : tokens.map((_, i) => i);
    const active = head.on.filter(Boolean).length;
    const perRow = Math.max(8, Math.floor(LINK_BUDGET / Math.max(1, active * queries.length)));
    const fragment = document.createDocumentFragment();
    for (let h = 0; h < H; h++) {
      if (!head.on[h]) continue;
      for (const q of queries) {
        const row = rowWeights(head.layer, h, q);
        let keys = [];
        for (let k = 0; k < N; k++) if (row[k] >= MIN_LINK) keys.push(k);
        if (keys.length > perRow) keys = keys.sort((a, b) => row[b] - row[a]).slice(0, perRow);
        for (const k of keys) {
          const line = svgEl("line", {
            class: "link", x1: LEFT_X + 6, y1: y(q), x2: RIGHT_X - 6, y2: y(k), stroke: headColour(h),
            "stroke-opacity": row[k].toFixed(3), "data-head": h, "data-from": q, "data-to": k,
          });
          fragment.appendChild(line);
          head.linksFrom[q].push(line);
          head.linksTo[k].push(line);
        }
      }
    }
    linkGroup.appendChild(fragment);
  }

  function hover(text, links, on) {
    svg.classList.toggle("hovering", on);
    text.classList.toggle("active", on);
    for (const line of links) line.classList.toggle("hl", on);
  }

  function tokenText(i, side) {
    const klass = "token " + side + (data.special[i] ? " special" : "") + (i === data.focus ? " focus" : "");
    const text = svgEl("text", {
      class: klass, x: side === "left" ? LEFT_X : RIGHT_X, y: y(i), "text-anchor": side === "left" ? "end" : "start",
      "dominant-baseline": "middle", "data-token-index": i,
    });
    text.textContent = tokens[i];
    const links = () => (side === "left" ? head.linksFrom[i] : head.linksTo[i]);
    text.addEventListener("mouseenter", () => hover(text, links(), true));
    text.addEventListener("mouseleave", () => hover(text, links(), false));
    return text;
  }

  function renderChips() {
    const chips = document.getElementById("head-chips");
    const update = () => {
      chips.querySelectorAll(".chip").forEach((chip, h) => chip.classList.toggle("off", !head.on[h]));
      drawLinks();
    };
    for (let h = 0; h < H; h++) {
      const chip = chips.appendChild(el("span", "chip", String(h)));
      chip.dataset.head = String(h);
      chip.style.background = headColour(h);
      chip.title = "head " + h + ": click to toggle, double-click to show it alone";
      chip.addEventListener("click", () => { head.on[h] = !head.on[h]; update(); });
      chip.addEventListener("dblclick", () => {
        const alone = head.on.every((on, g) => on === (g === h));
        head.on = head.on.map((_, g) => alone || g === h);
        update();
      });
    }
  }

  function renderHeadView() {
    svg.setAttribute("width", SVG_WIDTH);
    svg.setAttribute("height", N * ROW + 8);
    svg.appendChild(linkGroup);
    const texts = document.createDocumentFragment();
    for (let i = 0; i < N; i++) texts.append(tokenText(i, "left"), tokenText(i, "right"));
    svg.appendChild(texts);
    const select = document.getElementById("head-layer");
    fillSelect(select, L, head.layer);
    select.addEventListener("change", () => { head.layer = +select.value; drawLinks(); });
    renderChips();
    document.getElementById("head-hint").textContent = data.pooled
      ? "The text has " + N + " tokens: only " + quoted(data.focus) + "'s links are drawn, at full resolution. " +
        "Hover a token to see only its links."
      : "Each line: a query (left) attending to a key (right), opacity = weight (links under " + MIN_LINK +
        " not drawn). Hover a token to see only its links.";
    if (data.causal) {
      document.getElementById("head-hint").append(" Every line goes across or up: " + SEES_EARLIER + ".");
    }
    drawLinks();
  }

  // ---- rollout ------------------------------------------------------------------------------------------
  // Bars for the tokens in candidates, the TOP_BARS largest by values (an (N,) array), largest first.
  function bars(container, values, candidates) {
    const order = candidates.slice().sort((a, b) => values[b] - values[a] || a - b);
    const shown = order.slice(0, TOP_BARS);
    const largest = Math.max(shown.length ? values[shown[0]] : 0, 1e-9);
    for (const i of shown) {
      const klass = "bar-row" + (i === data.focus ? " focus" : "") + (data.special[i] ? " special" : "");
      const row = container.appendChild(el("div", klass));
      row.dataset.tokenIndex = String(i);
      row.append(el("span", "bar-label", tokens[i] + " #" + i), el("span", "bar-track"),
                 el("span", "bar-value", values[i].toFixed(3)));
      row.children[1].appendChild(el("div", "bar")).style.width = (100 * values[i] / largest) + "%";
    }
    return shown.length;
  }

  function renderRollout() {
    const show = heatmap(document.getElementById("rollout-map"), (q, k, v) =>
      data.binLabels[q] + " draws " + v.toFixed(3) + " from " + data.binLabels[k]);
    show(rollout.values);
    const seen = tokens.map((_, i) => i).slice(0, data.visible);  // a decoder's later tokens are masked
    const all = document.getElementById("rollout-bars");
    if (data.sink) all.appendChild(el("div", "bars-title", "all " + data.visible + " tokens up to " + quoted(data.focus)));
    const count = bars(all, rolloutRow.values, seen);
    if (data.sink && rolloutRest && data.visible > 1) {
      const rest = document.getElementById("rollout-rest");
      rest.hidden = false;
      rest.appendChild(el("div", "bars-title", "without the first token, " + quoted(0) +
                                               ": each token's share of what is left"));
      bars(rest, rolloutRest.values, seen.slice(1));
    }
    document.getElementById("rollout-hint").textContent = "Attention rollout (Abnar & Zuidema 2020): what " +
      quoted(data.focus) + " draws on through all layers; the " + count + " largest of " +
      (data.causal ? "the " + data.visible + " tokens up to it (rollout drains toward a decoder's first token, " +
                     "which sees only itself)." : N + " tokens.");
  }

  try {
    renderHeader();
    renderTable();
    renderHeadView();
    renderModelView();
    renderDetail();
    selectDetail(data.layer, data.head);
    renderRollout();
    document.body.dataset.ready = "true";
  } catch (error) {
    document.getElementById("header").appendChild(el("p", "", "The view failed: " + error)).id = "error";
    throw error;
  }
})();
