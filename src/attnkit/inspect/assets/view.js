// attnkit attention view: reads the JSON in #attnkit-data and builds every view with DOM, SVG and canvas
// calls. Every string of the data only ever goes through textContent, never innerHTML: it shows as text.
"use strict";
(function () {
  const SVG_NS = "http://www.w3.org/2000/svg";  // a namespace name, not a URL that is fetched
  const MIN_LINK = 0.01;      // head-view links lighter than this are invisible, so not drawn
  const LINK_BUDGET = 30000;  // at most about this many lines in the head view (each row keeps its top links)
  const ROW = 18;             // head-view row height (px)
  const SVG_WIDTH = 600;      // the head view's width where there is room; narrower screens get their width
  const IMAGE_SIDE = 448;     // an image is drawn at least this large on its longer side (whole multiples)
  const TOP_BARS = 30;        // rollout bars shown
  const OVERLAY_ALPHA = 0.6;  // the image view's patch colours over the image
  const TICKS = [0, 0.01, 0.1, 0.25, 0.5, 1];  // legend ticks, as shares of the scale's top
  // White (or, dark, near-black) to blue by sqrt(weight), so that the many small weights of a long row stay
  // visible; a cell a decoder's query cannot see is a neutral grey, apart from every colour of the ramp.
  const SCHEMES = {
    light: { ramp: [[255, 255, 255], [107, 174, 214], [8, 48, 107]], masked: [222, 222, 222] },
    dark: { ramp: [[24, 26, 36], [33, 113, 181], [222, 235, 247]], masked: [100, 100, 100] },
  };
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
  const ex = data.explanation;  // null for a view of maps; an explanation adds its table and rollout
  const Q = axis(data.queryTokens, data.querySpecial, data.queryBins, data.queryLabels);
  const K = data.keyTokens ? axis(data.keyTokens, data.keySpecial, data.keyBins, data.keyLabels) : Q;
  const MQ = Q.bins.length, MK = K.bins.length;
  const maps = decode(data.maps);  // (L, H, MQ, MK)
  const L = maps.shape[0], H = maps.shape[1];
  const focus = data.focus;  // a query token index, or null
  const focusBin = focus === null ? -1 : Q.binOf(focus);
  // (MQ, MK) 1 where no query of the row's bin sees any key of the column's bin: masked, not a zero weight
  const masked = new Uint8Array(MQ * MK);
  if (data.causal) {
    for (let q = 0; q < MQ; q++) {
      for (let k = 0; k < MK; k++) masked[q * MK + k] = K.bins[k][0] > Q.bins[q][1] - 1 + data.offset;
    }
  }
  const SEES_EARLIER = "in a decoder a token attends only to itself and earlier tokens";

  function axis(tokens, special, bins, labels) {
    return { tokens: tokens, special: special, bins: bins, labels: labels,
             binOf: (i) => bins.findIndex((b) => b[0] <= i && i < b[1]),
             labelSpecial: bins.map((b) => b[1] - b[0] === 1 && special[b[0]]) };
  }

  function mapOf(layer, head) {  // (MQ, MK) view of one head's map
    const start = (layer * H + head) * MQ * MK;
    return maps.values.subarray(start, start + MQ * MK);
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

  function show(id) { const node = document.getElementById(id); node.hidden = false; return node; }

  function headColour(head) {
    return head < PALETTE.length ? PALETTE[head] : "hsl(" + ((head * 137.5) % 360) + ", 60%, 45%)";
  }

  function quoted(text) { return "\u201c" + text + "\u201d"; }

  function fillSelect(select, count, value, name) {
    for (let i = 0; i < count; i++) select.appendChild(el("option", "", name ? name(i) : String(i))).value = String(i);
    select.value = String(value);
  }

  const tip = document.getElementById("tip");
  function showTip(x, y, text) {
    tip.textContent = text;
    tip.hidden = false;
    tip.style.left = Math.max(0, Math.min(x + 14, window.innerWidth - tip.offsetWidth - 4)) + "px";
    tip.style.top = y + 14 + "px";
  }
  function hideTip() { tip.hidden = true; }

  // ---- colours and legends ------------------------------------------------------------------------------
  const darkQuery = window.matchMedia ? window.matchMedia("(prefers-color-scheme: dark)") : null;
  let scheme = darkQuery && darkQuery.matches ? SCHEMES.dark : SCHEMES.light;
  const repaints = [];  // redraws everything coloured, when the reader's scheme changes

  function colour(v) {  // v: weight in [0, 1] of the scale's top
    const t = Math.sqrt(Math.min(1, Math.max(0, v))), r = scheme.ramp;
    const [a, b, s] = t < 0.5 ? [r[0], r[1], 2 * t] : [r[1], r[2], 2 * t - 1];
    return [a[0] + (b[0] - a[0]) * s, a[1] + (b[1] - a[1]) * s, a[2] + (b[2] - a[2]) * s];
  }

  function css(c, alpha) {
    return "rgba(" + Math.round(c[0]) + "," + Math.round(c[1]) + "," + Math.round(c[2]) + "," + (alpha || 1) + ")";
  }

  // A colour bar with ticks at weights, placed by sqrt as the colours are; returns set(top), which relabels it
  // for a scale whose top colour means the weight top (1 for heatmaps, a row's largest for the image view).
  function legend(container, caption, withMasked) {
    const box = container.appendChild(el("div", "legend"));
    box.setAttribute("role", "img");
    const bar = el("div", "legend-bar"), ticks = el("div", "legend-ticks");
    box.append(el("div", "legend-caption", caption), bar, ticks);
    if (withMasked) {
      const key = box.appendChild(el("div", "legend-masked"));
      key.append(el("span", "swatch"), el("span", "", "masked: " + SEES_EARLIER));
      repaints.push(() => { key.firstChild.style.background = css(scheme.masked); });
    }
    let top = 1;
    const paintBar = () => {
      const stops = [];
      for (let i = 0; i <= 10; i++) stops.push(css(colour((i / 10) * (i / 10))) + " " + i * 10 + "%");
      bar.style.background = "linear-gradient(to right, " + stops.join(", ") + ")";
    };
    const set = (value) => {
      top = value;
      ticks.replaceChildren();
      for (const share of TICKS) {
        const tick = ticks.appendChild(el("span", "", +(share * top).toPrecision(2) + ""));
        tick.style.left = 100 * Math.sqrt(share) + "%";
      }
      box.setAttribute("aria-label", caption + ": from 0 (" + (scheme === SCHEMES.dark ? "dark" : "white") +
                       ") to " + top.toPrecision(2) + " (dark blue)");
    };
    repaints.push(paintBar, () => set(top));
    paintBar();
    set(1);
    return set;
  }

  function paint(canvas, values, rows, cols, cellMask) {  // values: (rows, cols), one pixel per cell
    canvas.width = cols;
    canvas.height = rows;
    const context = canvas.getContext("2d");
    const image = context.createImageData(cols, rows);
    for (let i = 0; i < rows * cols; i++) {
      const c = cellMask && cellMask[i] ? scheme.masked : colour(values[i]);
      image.data[4 * i] = c[0];
      image.data[4 * i + 1] = c[1];
      image.data[4 * i + 2] = c[2];
      image.data[4 * i + 3] = 255;
    }
    context.putImageData(image, 0, 0);
  }

  // ---- header -------------------------------------------------------------------------------------------
  function fact(name, id, value) {
    const facts = document.getElementById("facts");
    facts.appendChild(el("dt", "", name));
    facts.appendChild(el("dd", "", value)).id = id;
  }

  function describeMaps() {
    const shape = L + " layer" + (L === 1 ? "" : "s") + " \u00d7 " + H + " heads, " + Q.tokens.length +
      " queries \u00d7 " + K.tokens.length + " keys";
    if (data.kind === "image") {
      const im = data.image;
      return shape + "; keys: " + (im.prefix ? im.prefix + " leading token" + (im.prefix === 1 ? "" : "s") +
        " then " : "") + im.rows + " \u00d7 " + im.cols + " image patches, row by row";
    }
    if (data.kind === "cross") return shape + "; cross-attention" + (data.causal ? ", causal" : "");
    return shape + "; self-attention" + (data.causal ? ", decoder (causal)" : "");
  }

  function renderHeader() {
    const title = ex ? ex.model : data.title;
    document.title = "attnkit: " + title;
    document.getElementById("title").textContent = ex ? "attnkit attention view" : title;
    if (ex) {
      fact("model", "model", ex.model + " \u2014 " + L + " layers \u00d7 " + H + " heads, " +
           (data.causal ? "decoder (causal)" : "encoder"));
      fact("text", "text", ex.text);
    } else {
      fact("maps", "shape", describeMaps());
    }
    if (focus !== null) {
      const seen = data.causal ? "; it attends to the " + (focus + data.offset + 1) + " tokens up to it, none after" : "";
      fact("focus", "focus", quoted(Q.tokens[focus]) + " (query " + focus + ")" + seen);
    }
    if (ex) fact("shape", "shape", Q.tokens.length + " tokens" + (ex.pooled ? ", heatmaps pooled into " + MQ +
                                                                  " token ranges" : ""));
    const notes = document.getElementById("notes");
    for (const note of data.notes) notes.appendChild(el("li", "", note));
    if (data.sink) show("sink").textContent = data.sink;
  }

  // ---- the focus token's table, per layer (the terminal's) ---------------------------------------------
  function renderTable() {
    show("layer-table");
    fillTable(document.getElementById("focus-table"), ex.table.header, ex.table.rows, null);
    document.getElementById("table-hint").textContent = "The tokens " + quoted(Q.tokens[focus]) +
      " attends to most in each layer (mean over heads" +
      (data.causal ? ", among the " + ex.visible + " tokens up to it" : "") + ")" +
      (data.sink ? "; the first token's weight, then the others ranked without it." : ".");
  }

  // A text table: a header row, then rows of cells; ``shades`` (rows x (cells - 1), in [0, 1]) tints every cell
  // after the first, or null for none.
  function fillTable(table, header, rows, shades) {
    const head = table.appendChild(el("thead")).appendChild(el("tr"));
    for (const name of header) head.appendChild(el("th", "", name));
    const body = table.appendChild(el("tbody"));
    rows.forEach((row, r) => {
      const line = body.appendChild(el("tr"));
      row.forEach((cell, c) => {
        const td = line.appendChild(el("td", "", cell));
        const shade = shades && c > 0 ? shades[r][c - 1] : null;  // column 0 names the token
        if (shade !== null) {
          td.className = "shaded";
          td.style.background = "color-mix(in srgb, var(--bar) " + Math.round(100 * Math.max(0, Math.min(1, shade))) +
                                "%, transparent)";
        }
      });
    });
  }

  // ---- attention vs attribution (explain --attribution) --------------------------------------------------
  function renderAttribution() {
    const a = ex.attribution;
    show("attribution-view");
    document.getElementById("attribution-lead").textContent = a.lead;
    fillTable(document.getElementById("attribution-methods"), a.methods.header, a.methods.rows, null);
    fillTable(document.getElementById("attribution-tokens"), a.tokens.header, a.tokens.rows, a.tokens.shades);
    document.getElementById("attribution-layers").textContent = "Raw attention, layer by layer, rho: " +
      a.layers.map((r) => r === null ? "n/a" : (r >= 0 ? "+" : "") + r.toFixed(2)).join(" ");
    const notes = document.getElementById("attribution-notes");
    for (const note of a.notes) notes.appendChild(el("li", "", note));
    document.getElementById("attribution-reading").textContent = a.reading;
  }

  // ---- heatmaps -----------------------------------------------------------------------------------------
  // A rows x cols heatmap with labels on both axes (every k-th when cells are small), a legend, hover and
  // keyboard (arrow keys move a cell cursor) read-outs; describe(q, k, v) gives a cell's text. Returns
  // draw(values), which paints (rows, cols) values.
  function heatmap(container, rowAxis, colAxis, cellMask, describe) {
    const rows = rowAxis.labels.length, cols = colAxis.labels.length;
    const room = Math.max(120, (container.clientWidth || 560) - 140);
    const cell = Math.max(4, Math.min(24, Math.floor(Math.min(560, room) / Math.max(rows, cols))));
    const wrap = container.appendChild(el("div", "scroll"));
    const grid = wrap.appendChild(el("div", "heatmap"));
    const top = el("div", "cols"), side = el("div", "rows");
    const every = Math.ceil(11 / cell);
    for (let k = 0; k < cols; k++) {
      const label = top.appendChild(el("div", "label" + (rowAxis === colAxis && k === focusBin ? " focus" : ""),
                                       k % every === 0 ? colAxis.labels[k] : ""));
      label.style.width = cell + "px";
    }
    for (let q = 0; q < rows; q++) {
      const label = side.appendChild(el("div", "label" + (q === focusBin ? " focus" : ""),
                                        q % every === 0 ? rowAxis.labels[q] : ""));
      label.style.height = label.style.lineHeight = cell + "px";
    }
    const canvas = el("canvas");
    canvas.style.width = cols * cell + "px";
    canvas.style.height = rows * cell + "px";
    canvas.tabIndex = 0;
    canvas.setAttribute("role", "img");
    canvas.setAttribute("aria-label", "heatmap, " + rows + " queries by " + cols + " keys: arrow keys read a cell");
    grid.append(el("div"), top, side, canvas);
    legend(container, "colour ~ sqrt(weight)", data.causal && cellMask !== null);
    let current = null;
    const cursor = { q: 0, k: 0 };
    const text = (q, k) => (cellMask && cellMask[q * cols + k]
      ? rowAxis.labels[q] + " cannot see " + colAxis.labels[k] + ": masked (" + SEES_EARLIER + ")"
      : describe(q, k, current[q * cols + k]));
    canvas.addEventListener("mousemove", (event) => {
      const q = Math.floor(event.offsetY / canvas.clientHeight * rows);
      const k = Math.floor(event.offsetX / canvas.clientWidth * cols);
      if (current && q >= 0 && q < rows && k >= 0 && k < cols) showTip(event.clientX, event.clientY, text(q, k));
    });
    canvas.addEventListener("mouseleave", hideTip);
    canvas.addEventListener("blur", hideTip);
    canvas.addEventListener("keydown", (event) => {
      const step = { ArrowUp: [-1, 0], ArrowDown: [1, 0], ArrowLeft: [0, -1], ArrowRight: [0, 1] }[event.key];
      if (!step || !current) return;
      event.preventDefault();
      cursor.q = Math.max(0, Math.min(rows - 1, cursor.q + step[0]));
      cursor.k = Math.max(0, Math.min(cols - 1, cursor.k + step[1]));
      const box = canvas.getBoundingClientRect();
      showTip(box.left + (cursor.k + 0.5) * box.width / cols, box.top + (cursor.q + 0.5) * box.height / rows,
              text(cursor.q, cursor.k));
    });
    const draw = (values) => { current = values; paint(canvas, values, rows, cols, cellMask); };
    repaints.push(() => current && draw(current));
    return draw;
  }

  // ---- detail and model views ---------------------------------------------------------------------------
  const detail = {
    layerSelect: document.getElementById("detail-layer"),
    headSelect: document.getElementById("detail-head"),
  };

  function selectDetail(layer, head, reveal) {
    detail.layer = layer;
    detail.head = head;
    detail.layerSelect.value = String(layer);
    detail.headSelect.value = String(head);
    document.getElementById("detail-label").textContent = "layer " + layer + ", head " + head;
    detail.draw(mapOf(layer, head));
    for (const thumb of document.querySelectorAll("canvas.thumb")) {
      const on = +thumb.dataset.layer === layer && +thumb.dataset.head === head;
      thumb.classList.toggle("selected", on);
      thumb.parentNode.setAttribute("aria-pressed", String(on));
    }
    if (reveal) {  // a thumbnail was chosen: bring the detail into view unless all of it is already there
      const section = document.getElementById("detail-view"), box = section.getBoundingClientRect();
      if (box.top < 0 || box.bottom > window.innerHeight) section.scrollIntoView({ block: "start" });
    }
  }

  function renderDetail() {
    detail.draw = heatmap(document.getElementById("detail-map"), Q, K, masked, (q, k, v) =>
      "query " + Q.labels[q] + " \u2192 key " + K.labels[k] + ": " + v.toFixed(3));
    fillSelect(detail.layerSelect, L, data.layer);
    fillSelect(detail.headSelect, H, data.head);
    detail.layerSelect.addEventListener("change", () => selectDetail(+detail.layerSelect.value, detail.head));
    detail.headSelect.addEventListener("change", () => selectDetail(detail.layer, +detail.headSelect.value));
  }

  function renderModelView() {
    if (data.causal) {
      document.getElementById("model-hint").append(" Grey cells are masked: " + SEES_EARLIER + ".");
    }
    legend(document.getElementById("model-legend"), "colour ~ sqrt(weight)", data.causal);
    const grid = document.getElementById("model-grid");
    grid.style.gridTemplateColumns = "auto repeat(" + H + ", auto)";
    grid.appendChild(el("div"));
    for (let h = 0; h < H; h++) grid.appendChild(el("div", "axis", "head " + h));
    const side = 64 / Math.max(MQ, MK);
    const thumbs = [];
    for (let l = 0; l < L; l++) {
      grid.appendChild(el("div", "axis", "layer " + l));
      for (let h = 0; h < H; h++) {
        const button = grid.appendChild(el("button", "thumb-button"));
        button.type = "button";
        button.setAttribute("aria-label", "layer " + l + ", head " + h);
        button.setAttribute("aria-pressed", "false");
        const thumb = button.appendChild(el("canvas", "thumb"));
        thumb.dataset.layer = String(l);
        thumb.dataset.head = String(h);
        thumb.title = "layer " + l + ", head " + h;
        thumb.style.width = MK * side + "px";
        thumb.style.height = MQ * side + "px";
        thumbs.push([thumb, l, h]);
        button.addEventListener("click", () => selectDetail(l, h, true));
      }
    }
    const draw = () => { for (const [thumb, l, h] of thumbs) paint(thumb, mapOf(l, h), MQ, MK, masked); };
    repaints.push(draw);
    draw();
  }

  // ---- head view ----------------------------------------------------------------------------------------
  // Left column: queries; right column: keys; a line per (head, query, key) with opacity = weight. An
  // explanation of a long text draws only the focus token's full-resolution row (never N^2 lines); other
  // views draw their (pooled) maps' rows.
  const pooledFocus = Boolean(ex && ex.pooled);
  const left = pooledFocus ? Q.tokens : Q.labels, right = pooledFocus ? K.tokens : K.labels;
  const leftSpecial = pooledFocus ? Q.special : Q.labelSpecial, rightSpecial = pooledFocus ? K.special : K.labelSpecial;
  const leftFocus = pooledFocus ? focus : focusBin, rightFocus = K === Q ? leftFocus : -1;
  const head = { layer: data.layer, on: new Array(H).fill(true), linksFrom: [], linksTo: [] };
  const svg = document.getElementById("head-svg");
  const linkGroup = svgEl("g", { class: "links" });
  const focusRows = pooledFocus ? decode(ex.focusRows) : null;  // (L, H, N)

  function rowWeights(layer, h, query) {  // the weights of a left token's row over the right tokens, or null
    if (!pooledFocus) return mapOf(layer, h).subarray(query * MK, (query + 1) * MK);
    if (query !== focus) return null;
    const start = (layer * H + h) * right.length;
    return focusRows.values.subarray(start, start + right.length);
  }

  function y(i) { return i * ROW + ROW / 2 + 4; }
  const columnX = { left: 170, right: 430 };  // set by renderHeadView from the room there is

  function drawLinks() {
    linkGroup.replaceChildren();
    head.linksFrom = left.map(() => []);
    head.linksTo = right.map(() => []);
    const queries = pooledFocus ? [focus] : left.map((_, i) => i);
    const active = head.on.filter(Boolean).length;
    const perRow = Math.max(8, Math.floor(LINK_BUDGET / Math.max(1, active * queries.length)));
    const fragment = document.createDocumentFragment();
    for (let h = 0; h < H; h++) {
      if (!head.on[h]) continue;
      for (const q of queries) {
        const row = rowWeights(head.layer, h, q);
        let keys = [];
        for (let k = 0; k < right.length; k++) if (row[k] >= MIN_LINK) keys.push(k);
        if (keys.length > perRow) keys = keys.sort((a, b) => row[b] - row[a]).slice(0, perRow);
        for (const k of keys) {
          const line = svgEl("line", {
            class: "link", x1: columnX.left + 6, y1: y(q), x2: columnX.right - 6, y2: y(k), stroke: headColour(h),
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

  // One token of a column. Each column is one Tab stop (its focus token, else its first); arrow keys move
  // within it, and a focused token shows its links as hovering does.
  function tokenText(i, side) {
    const isLeft = side === "left", special = (isLeft ? leftSpecial : rightSpecial)[i];
    const isFocus = i === (isLeft ? leftFocus : rightFocus);
    const text = svgEl("text", {
      class: "token " + side + (special ? " special" : "") + (isFocus ? " focus" : ""),
      x: columnX[side], y: y(i), "text-anchor": isLeft ? "end" : "start",
      "dominant-baseline": "middle", "data-token-index": i,
      tabindex: i === Math.max(0, isLeft ? leftFocus : rightFocus) ? 0 : -1,
    });
    text.textContent = (isLeft ? left : right)[i];
    const links = () => (isLeft ? head.linksFrom[i] : head.linksTo[i]);
    text.addEventListener("mouseenter", () => hover(text, links(), true));
    text.addEventListener("mouseleave", () => hover(text, links(), false));
    text.addEventListener("focus", () => hover(text, links(), true));
    text.addEventListener("blur", () => hover(text, links(), false));
    text.addEventListener("keydown", (event) => {
      const step = { ArrowUp: -1, ArrowDown: 1 }[event.key];
      const next = step && svg.querySelector(".token." + side + "[data-token-index='" + (i + step) + "']");
      if (!next) return;
      event.preventDefault();
      text.setAttribute("tabindex", "-1");
      next.setAttribute("tabindex", "0");
      next.focus();
    });
    return text;
  }

  function renderChips() {
    const chips = document.getElementById("head-chips");
    const update = () => {
      chips.querySelectorAll(".chip").forEach((chip, h) => {
        chip.classList.toggle("off", !head.on[h]);
        chip.setAttribute("aria-pressed", String(head.on[h]));
      });
      drawLinks();
    };
    const solo = (h) => {
      const alone = head.on.every((on, g) => on === (g === h));
      head.on = head.on.map((_, g) => alone || g === h);
      update();
    };
    for (let h = 0; h < H; h++) {
      const chip = chips.appendChild(el("button", "chip", String(h)));
      chip.type = "button";
      chip.dataset.head = String(h);
      chip.style.background = headColour(h);
      chip.title = "head " + h + ": click (Enter) to toggle, double-click (Shift+Enter) to show it alone";
      chip.setAttribute("aria-pressed", "true");
      chip.addEventListener("click", () => { head.on[h] = !head.on[h]; update(); });
      chip.addEventListener("dblclick", () => solo(h));
      chip.addEventListener("keydown", (event) => {
        if (event.key === "Enter" && event.shiftKey) { event.preventDefault(); solo(h); }
      });
    }
  }

  function renderHeadView() {
    show("head-view");
    const height = Math.max(left.length, right.length) * ROW + 8;
    const width = Math.max(240, Math.min(SVG_WIDTH, svg.parentNode.clientWidth || SVG_WIDTH));
    columnX.left = Math.round(width * 0.283);
    columnX.right = Math.round(width * 0.717);
    svg.setAttribute("width", width);
    svg.setAttribute("height", height);
    svg.appendChild(linkGroup);
    const texts = document.createDocumentFragment();
    for (let i = 0; i < left.length; i++) texts.append(tokenText(i, "left"));
    for (let i = 0; i < right.length; i++) texts.append(tokenText(i, "right"));
    svg.appendChild(texts);
    const select = document.getElementById("head-layer");
    fillSelect(select, L, head.layer);
    select.addEventListener("change", () => { head.layer = +select.value; drawLinks(); });
    renderChips();
    const hint = document.getElementById("head-hint");
    hint.textContent = pooledFocus
      ? "The text has " + left.length + " tokens: only " + quoted(Q.tokens[focus]) + "'s links are drawn, at " +
        "full resolution. Hover or focus a token to see only its links."
      : "Each line: a query (left) attending to a key (right), opacity = weight (links under " + MIN_LINK +
        " not drawn). Hover a token, or Tab to a column and use the arrow keys, to see only its links.";
    if (data.causal) hint.append(" Every line goes across or up: " + SEES_EARLIER + ".");
    drawLinks();
  }

  // ---- image view ---------------------------------------------------------------------------------------
  // The image with one query's attention over its patches (one layer, one head or their mean), coloured by
  // sqrt(weight / the row's largest patch weight); the leading non-patch tokens' weights in words.
  function renderImageView() {
    show("image-view");
    const im = data.image, canvas = document.getElementById("image-canvas");
    const base = document.createElement("canvas"), zoom = Math.max(1, Math.ceil(IMAGE_SIDE / Math.max(im.width, im.height)));
    base.width = im.width;
    base.height = im.height;
    canvas.width = im.width * zoom;
    canvas.height = im.height * zoom;
    const pixels = atob(im.pixels), picture = base.getContext("2d").createImageData(im.width, im.height);
    for (let i = 0; i < im.width * im.height; i++) {
      for (let c = 0; c < 3; c++) picture.data[4 * i + c] = pixels.charCodeAt(3 * i + c);
      picture.data[4 * i + 3] = 255;
    }
    base.getContext("2d").putImageData(picture, 0, 0);
    const [query, layer, headSelect] = ["image-query", "image-layer", "image-head"].map((id) => document.getElementById(id));
    fillSelect(query, MQ, focusBin, (q) => q + ": " + Q.labels[q]);
    fillSelect(layer, L, data.layer);
    headSelect.appendChild(el("option", "", "mean")).value = "-1";
    fillSelect(headSelect, H, -1);
    const setLegend = legend(document.getElementById("image-legend"), "colour ~ sqrt(weight), top = the row's largest patch weight", false);
    const draw = () => {
      const q = +query.value, l = +layer.value, h = +headSelect.value;
      const row = new Float32Array(MK);
      for (let g = h < 0 ? 0 : h; g < (h < 0 ? H : h + 1); g++) {
        const map = mapOf(l, g);
        for (let k = 0; k < MK; k++) row[k] += map[q * MK + k] / (h < 0 ? H : 1);
      }
      const patches = row.subarray(im.prefix);
      const top = Math.max(1e-9, ...patches);
      const context = canvas.getContext("2d"), w = canvas.width / im.cols, hh = canvas.height / im.rows;
      context.imageSmoothingEnabled = false;
      context.drawImage(base, 0, 0, canvas.width, canvas.height);
      patches.forEach((v, p) => {
        context.fillStyle = css(colour(v / top), OVERLAY_ALPHA);
        context.fillRect((p % im.cols) * w, Math.floor(p / im.cols) * hh, w, hh);
      });
      if (im.queryPatches && q >= im.prefix) {
        context.strokeStyle = "#d00";
        context.lineWidth = Math.max(2, w / 8);
        context.strokeRect(((q - im.prefix) % im.cols) * w, Math.floor((q - im.prefix) / im.cols) * hh, w, hh);
      }
      setLegend(top);
      const lead = Array.from({ length: im.prefix }, (_, k) => K.labels[k] + " " + row[k].toFixed(3));
      const total = patches.reduce((a, b) => a + b, 0);
      document.getElementById("image-prefix").textContent = "Query " + quoted(Q.labels[q]) + ": " +
        total.toFixed(3) + " of its weight on the patches" + (lead.length ? "; not on a patch: " + lead.join(", ") : "") + ".";
    };
    for (const select of [query, layer, headSelect]) select.addEventListener("change", draw);
    if (im.queryPatches) {  // click a patch to make it the query
      canvas.addEventListener("click", (event) => {
        const c = Math.floor(event.offsetX / canvas.clientWidth * im.cols);
        const r = Math.floor(event.offsetY / canvas.clientHeight * im.rows);
        query.value = String(im.prefix + r * im.cols + c);
        draw();
      });
    }
    document.getElementById("image-hint").textContent = "One query's attention over the " + im.rows + " \u00d7 " +
      im.cols + " patches" + (im.queryPatches ? "; click a patch to make it the query (outlined)." : ".");
    repaints.push(draw);
    draw();
  }

  // ---- rollout (explanations) ---------------------------------------------------------------------------
  // Bars for the tokens in candidates, the TOP_BARS largest by values (an (N,) array), largest first.
  function bars(container, values, candidates) {
    const order = candidates.slice().sort((a, b) => values[b] - values[a] || a - b);
    const shown = order.slice(0, TOP_BARS);
    const largest = Math.max(shown.length ? values[shown[0]] : 0, 1e-9);
    for (const i of shown) {
      const klass = "bar-row" + (i === focus ? " focus" : "") + (Q.special[i] ? " special" : "");
      const row = container.appendChild(el("div", klass));
      row.dataset.tokenIndex = String(i);
      row.append(el("span", "bar-label", Q.tokens[i] + " #" + i), el("span", "bar-track"),
                 el("span", "bar-value", values[i].toFixed(3)));
      row.children[1].appendChild(el("div", "bar")).style.width = (100 * values[i] / largest) + "%";
    }
    return shown.length;
  }

  function renderRollout() {
    show("rollout-view");
    const draw = heatmap(document.getElementById("rollout-map"), Q, Q, masked, (q, k, v) =>
      Q.labels[q] + " draws " + v.toFixed(3) + " from " + Q.labels[k]);
    draw(decode(ex.rollout).values);
    const seen = Q.tokens.map((_, i) => i).slice(0, ex.visible);  // a decoder's later tokens are masked
    const all = document.getElementById("rollout-bars");
    const name = quoted(Q.tokens[focus]);
    if (data.sink) all.appendChild(el("div", "bars-title", "all " + ex.visible + " tokens up to " + name));
    const count = bars(all, decode(ex.rolloutRow).values, seen);
    if (data.sink && ex.rolloutRest && ex.visible > 1) {
      const rest = show("rollout-rest");
      rest.appendChild(el("div", "bars-title", "without the first token, " + quoted(Q.tokens[0]) +
                                               ": each token's share of what is left"));
      bars(rest, decode(ex.rolloutRest).values, seen.slice(1));
    }
    document.getElementById("rollout-hint").textContent = "Attention rollout (Abnar & Zuidema 2020): what " +
      name + " draws on through all layers; the " + count + " largest of " +
      (data.causal ? "the " + ex.visible + " tokens up to it (rollout drains toward a decoder's first token, " +
                     "which sees only itself)." : Q.tokens.length + " tokens.");
  }

  // In a notebook the page sits in an <iframe srcdoc> (same origin): keep the frame as tall as the page.
  function fitFrame() {
    let frame = null;
    try { frame = window.frameElement; } catch (error) { return; }  // a cross-origin parent: leave it
    if (!frame || typeof ResizeObserver === "undefined") return;
    const fit = () => { frame.style.height = Math.ceil(document.documentElement.getBoundingClientRect().height) + "px"; };
    new ResizeObserver(fit).observe(document.body);
    fit();
  }

  try {
    renderHeader();
    if (ex) renderTable();
    if (ex && ex.attribution) renderAttribution();
    if (data.kind === "image") renderImageView(); else renderHeadView();
    renderModelView();
    renderDetail();
    selectDetail(data.layer, data.head, false);
    if (ex) renderRollout();
    if (darkQuery && darkQuery.addEventListener) {
      darkQuery.addEventListener("change", () => {
        scheme = darkQuery.matches ? SCHEMES.dark : SCHEMES.light;
        for (const repaint of repaints) repaint();
      });
    }
    fitFrame();
    document.body.dataset.ready = "true";
  } catch (error) {
    document.getElementById("header").appendChild(el("p", "", "The view failed: " + error)).id = "error";
    throw error;
  }
})();
