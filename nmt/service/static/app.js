// The page of nmt-serve: translate through /translate, then draw /inspect's attention and gates on
// canvases. Everything is drawn here, from the JSON; nothing is fetched from another host.
"use strict";

const $ = (id) => document.getElementById(id);
const tooltip = $("tooltip");
let typingTimer = null;
let requestNumber = 0; // answers to older requests are dropped

async function post(path, body) {
  const response = await fetch(path, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  const data = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(data.error || `${response.status} ${response.statusText}`);
  return data;
}

async function describeModel() {
  try {
    const info = await (await fetch("/model")).json();
    $("model-line").textContent =
      `${info.src_lang} → ${info.tgt_lang} · encoder ${info.encoder_cell}, decoder ${info.decoder_cell}, ` +
      `attention ${info.attention} · ${info.parameters.toLocaleString()} parameters · ${info.precision}` +
      (info.quantize !== "none" ? ` · ${info.quantize}` : "");
  } catch (error) {
    $("model-line").textContent = "the model's description is not available";
  }
}

async function run() {
  const sentence = $("source").value.trim();
  const number = ++requestNumber;
  if (!sentence) {
    $("target").textContent = "";
    $("attention-section").hidden = $("gates-section").hidden = true;
    return;
  }
  $("status").textContent = "translating…";
  try {
    const beam = Math.max(1, Math.min(16, parseInt($("beam").value, 10) || 5));
    const lines = sentence.split(/\n+/);
    const translated = await post("/translate", { segments: lines, beam });
    if (number !== requestNumber) return;
    $("target").textContent = translated.translations.map((t) => t.text).join("\n");
    $("status").textContent = `${translated.ms.toFixed(0)} ms`;
    const inspected = await post("/inspect", { sentence: lines[0] });
    if (number !== requestNumber) return;
    drawInspection(inspected);
  } catch (error) {
    if (number === requestNumber) $("status").textContent = `error: ${error.message}`;
  }
}

// --- heatmaps -------------------------------------------------------------------------------------
function color(value, low, high) {
  // white -> deep blue over [low, high]
  const t = high > low ? Math.min(1, Math.max(0, (value - low) / (high - low))) : 0.5;
  const r = Math.round(255 - t * (255 - 20));
  const g = Math.round(255 - t * (255 - 60));
  const b = Math.round(255 - t * (255 - 160));
  return `rgb(${r},${g},${b})`;
}

// rows x columns values; rowLabels at the left, columnLabels (optional) on top.
function heatmap(canvas, values, rowLabels, columnLabels, options) {
  const rows = values.length;
  const columns = rows ? values[0].length : 0;
  const context = canvas.getContext("2d");
  const font = "12px system-ui, sans-serif";
  context.font = font;
  const labelWidth = Math.ceil(Math.max(0, ...rowLabels.map((l) => context.measureText(l).width))) + 8;
  const topHeight = columnLabels ? Math.ceil(Math.max(0, ...columnLabels.map((l) => context.measureText(l).width))) + 8 : 0;
  const available = Math.max(120, (canvas.parentElement.clientWidth || 600) - labelWidth - 16);
  const cellWidth = Math.max(options.minCell || 1, Math.min(options.maxCell || 28, available / Math.max(columns, 1)));
  const cellHeight = options.cellHeight || Math.max(10, Math.min(24, cellWidth));
  const scale = window.devicePixelRatio || 1;
  const width = labelWidth + columns * cellWidth;
  const height = topHeight + rows * cellHeight;
  canvas.width = Math.ceil(width * scale);
  canvas.height = Math.ceil(height * scale);
  canvas.style.width = `${width}px`;
  canvas.style.height = `${height}px`;
  context.setTransform(scale, 0, 0, scale, 0, 0);
  context.font = font;
  context.fillStyle = "#fff";
  context.fillRect(0, 0, width, height);
  const [low, high] = options.range || [0, 1];
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < columns; c++) {
      context.fillStyle = color(values[r][c], low, high);
      context.fillRect(labelWidth + c * cellWidth, topHeight + r * cellHeight, Math.ceil(cellWidth), Math.ceil(cellHeight));
    }
  }
  context.fillStyle = "#1d2330";
  context.textBaseline = "middle";
  rowLabels.forEach((label, r) => context.fillText(label, 2, topHeight + (r + 0.5) * cellHeight));
  if (columnLabels) {
    context.save();
    columnLabels.forEach((label, c) => {
      context.save();
      context.translate(labelWidth + (c + 0.5) * cellWidth, topHeight - 4);
      context.rotate(-Math.PI / 2);
      context.fillText(label, 0, 0);
      context.restore();
    });
    context.restore();
  }
  canvas.onmousemove = (event) => {
    const box = canvas.getBoundingClientRect();
    const c = Math.floor((event.clientX - box.left - labelWidth) / cellWidth);
    const r = Math.floor((event.clientY - box.top - topHeight) / cellHeight);
    if (r < 0 || r >= rows || c < 0 || c >= columns) { tooltip.hidden = true; return; }
    tooltip.textContent = options.describe(r, c, values[r][c]);
    tooltip.style.left = `${event.clientX + 12}px`;
    tooltip.style.top = `${event.clientY + 12}px`;
    tooltip.hidden = false;
  };
  canvas.onmouseleave = () => { tooltip.hidden = true; };
}

function drawInspection(data) {
  if (data.attention) {
    $("attention-section").hidden = false;
    heatmap($("attention"), data.attention, data.tgt_pieces, data.src_pieces, {
      maxCell: 36, minCell: 14, range: [0, 1],
      describe: (r, c, v) => `${data.tgt_pieces[r]} ← ${data.src_pieces[c]}: ${v.toFixed(3)}`,
    });
  } else {
    $("attention-section").hidden = true;
  }
  const container = $("gates");
  container.replaceChildren();
  for (const layer of data.layers) {
    const block = document.createElement("div");
    block.className = "layer";
    block.dataset.layer = layer.name;
    const title = document.createElement("h3");
    title.textContent = `${layer.side} layer ${layer.layer} (${layer.direction})`;
    block.append(title);
    const row = document.createElement("div");
    row.className = "gate-row";
    for (const [gate, values] of Object.entries(layer.gates)) {
      row.append(figure(`${gate} gate`, (canvas) => heatmap(canvas, values, layer.pieces, null, {
        maxCell: 6, minCell: 1, cellHeight: 14, range: [0, 1],
        describe: (r, c, v) => `${gate} · ${layer.pieces[r]} · unit ${c}: ${v.toFixed(3)}`,
      })));
    }
    const norms = layer.state_norm.map((v) => [v]);
    const top = Math.max(...layer.state_norm, 1e-6);
    row.append(figure(`${layer.state} state norm`, (canvas) => heatmap(canvas, norms, layer.pieces, null, {
      maxCell: 60, minCell: 40, cellHeight: 14, range: [0, top],
      describe: (r, c, v) => `${layer.pieces[r]}: |${layer.state}| = ${v.toFixed(2)}`,
    }), "norm"));
    block.append(row);
    container.append(block);
  }
  $("gates-section").hidden = false;
  // Drawn once visible, so the canvases know their width.
  for (const draw of pending.splice(0)) draw();
}

const pending = [];
function figure(caption, draw, kind) {
  const wrapper = document.createElement("div");
  wrapper.className = kind === "norm" ? "gate norm" : "gate";
  const label = document.createElement("div");
  label.className = "muted";
  label.textContent = caption;
  const box = document.createElement("div");
  box.className = "figure";
  const canvas = document.createElement("canvas");
  box.append(canvas);
  wrapper.append(label, box);
  pending.push(() => draw(canvas));
  return wrapper;
}

$("translate").addEventListener("click", run);
$("source").addEventListener("input", () => {
  if (!$("live").checked) return;
  clearTimeout(typingTimer);
  typingTimer = setTimeout(run, 400);
});
$("source").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) run();
});
describeModel();
