// Through-The-Mask: a visual path editor on Image To Motion (the `paths` JSON widget stays the source of truth).
//
// The editor reads the paths JSON, draws the first frame with each object's mask tinted in its colour and
// moved to its pose at the current frame, and writes every edit back into the JSON (pixel units). A hand
// edit of the JSON shows in the editor; a saved workflow holds only the JSON, so it loads and runs in a
// ComfyUI without this extension. The objects (first frame, masks, names, colours, centroids) arrive
// with Image To Motion's result after a run (nodes/editor_preview.py): queue the workflow once.
//
// Only the frontend's public extension API is used: app.registerExtension, beforeRegisterNodeDef,
// node.addDOMWidget, node.widgets, onExecuted, onRemoved, api.apiURL. Tested on frontends 1.32.9 and 1.58.1.
//
// Keyboard (click the editor first): Space play/pause; Left/Right one frame (Shift: 10); Home/End first/last
// frame; Ctrl+Z undo; Ctrl+Shift+Z or Ctrl+Y redo; K keyframe the selected object where it is now;
// Delete/Backspace delete the selected keyframe; [ and ] previous/next keyframe of the selected object;
// Tab select the next object.

import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const NODE_TYPE = "TTM_ImageToMotion";
const PAYLOAD_KEY = "ttm_editor"; // nodes/editor_preview.py EDITOR_KEY
const STAGE_HEIGHT = 260;
const TOOLBAR_HEIGHT = 54; // two rows when the node is narrow
const ROW_HEIGHT = 18;
const RULER_HEIGHT = 16;
const LABEL_WIDTH = 90;
const MARK_HIT = 7;

// ---------------------------------------------------------------- the paths JSON (ttm_core/motion/paths.py)

const EASINGS = {
  linear: (u) => u,
  ease_in: (u) => u ** 3,
  ease_out: (u) => 1 - (1 - u) ** 3,
  ease_in_out: (u) => (u < 0.5 ? 4 * u ** 3 : 1 - (-2 * u + 2) ** 3 / 2),
  hold: (u) => (u >= 1 ? 1 : 0),
};

/** Parse the widget's text: {data} or {error}. Empty text = no paths. */
export function parsePaths(text) {
  if (!text || !text.trim()) return { data: { version: 1, units: "normalized", objects: {} } };
  try {
    const data = JSON.parse(text);
    if (!data || typeof data !== "object" || Array.isArray(data)) return { error: "the paths JSON is not an object" };
    if (data.objects !== undefined && (typeof data.objects !== "object" || Array.isArray(data.objects))) {
      return { error: "'objects' is not a mapping" };
    }
    return { data };
  } catch (err) {
    return { error: `not valid JSON (${err.message})` };
  }
}

/** JSON with Python's separators (", " and ": "), as ttm_core.motion.paths.format_paths writes it. */
function dumps(value) {
  if (Array.isArray(value)) return `[${value.map(dumps).join(", ")}]`;
  if (value && typeof value === "object") {
    return `{${Object.entries(value).map(([k, v]) => `${JSON.stringify(k)}: ${dumps(v)}`).join(", ")}}`;
  }
  return JSON.stringify(value);
}

/** The paths JSON as text: one object a line, one keyframe a line (format_paths' layout). */
export function formatPaths(data) {
  const head = `{"version": ${dumps(data.version ?? 1)}, "units": ${dumps(data.units ?? "normalized")}, "objects": {`;
  const entries = Object.entries(data.objects ?? {}).map(([name, entry]) => {
    const keys = entry && Array.isArray(entry.keyframes) && entry.keyframes.length ? entry.keyframes : null;
    if (!keys) return `  ${JSON.stringify(name)}: ${dumps(entry)}`;
    const rest = Object.entries(entry).filter(([k]) => k !== "keyframes").map(([k, v]) => `, ${JSON.stringify(k)}: ${dumps(v)}`).join("");
    return `  ${JSON.stringify(name)}: {"keyframes": [\n${keys.map((k) => "    " + dumps(k)).join(",\n")}]${rest}}`;
  });
  return entries.length ? `${head}\n${entries.join(",\n")}}}` : `${head}}}`;
}

function splinePoints(raw) {
  let value = raw;
  if (typeof value === "string") value = JSON.parse(value);
  if (!Array.isArray(value)) throw new Error("spline is not a list");
  if (value.length && Array.isArray(value[0]) && Array.isArray(value[0][0])) value = value[0];
  if (value.length && Array.isArray(value[0]) && value[0].length && typeof value[0][0] === "object") value = value[0];
  return value.map((p) => (Array.isArray(p) ? [Number(p[0]), Number(p[1])] : [Number(p.x), Number(p.y)]));
}

function keyTime(item, last) {
  if (typeof item.frame === "number") return item.frame;
  if (typeof item.t === "number") return item.t * last;
  return null;
}

/**
 * One object's resolved keyframes (as parse_paths resolves them): [{time, x, y, scale, rotation, easing, src}],
 * src = index in the entry's keyframes (-1: the rest pose at frame 0, or a spline point, not draggable).
 */
function resolvePath(entry, rest, units, size, frames) {
  const last = Math.max(frames - 1, 0);
  const [w, h] = size;
  const keys = [];
  if (Array.isArray(entry?.keyframes)) {
    let cur = { time: 0, x: rest[0], y: rest[1], scale: 1, rotation: 0, easing: "linear" };
    entry.keyframes.forEach((item, i) => {
      const time = keyTime(item, last);
      if (time === null) return;
      let { x, y } = cur;
      if (typeof item.x === "number" && typeof item.y === "number") {
        x = units === "pixels" ? item.x : item.x * w;
        y = units === "pixels" ? item.y : item.y * h;
      }
      cur = { time, x, y, scale: item.scale ?? cur.scale, rotation: item.rotation ?? cur.rotation,
              easing: EASINGS[item.easing] ? item.easing : "linear", src: i };
      keys.push(cur);
    });
  } else if (entry && entry.spline !== undefined) {
    const points = splinePoints(entry.spline);
    const [cw, ch] = Array.isArray(entry.size) ? entry.size : [w, h];
    let px = points.map(([x, y]) => [x * w / cw, y * h / ch]);
    const absolute = entry.anchor === "absolute";
    if (!absolute && px.length) px = px.map(([x, y]) => [rest[0] + x - px[0][0], rest[1] + y - px[0][1]]);
    const start = typeof entry.start === "number" ? entry.start : typeof entry.start_t === "number" ? entry.start_t * last : 0;
    const end = typeof entry.end === "number" ? entry.end : typeof entry.end_t === "number" ? entry.end_t * last : last;
    px.forEach(([x, y], i) => keys.push({ time: px.length === 1 ? start : start + (end - start) * i / (px.length - 1),
                                          x, y, scale: 1, rotation: 0, easing: "linear", src: -1 }));
    if (keys.length && keys[0].time > 0) {
      keys.unshift({ ...(absolute ? { x: rest[0], y: rest[1] } : { x: keys[0].x, y: keys[0].y }),
                     time: 0, scale: 1, rotation: 0, easing: "linear", src: -1 });
    }
    return { keys, curve: entry.curve === "smooth" ? "smooth" : "linear", spline: true };
  }
  keys.sort((a, b) => a.time - b.time);
  if (!keys.length || keys[0].time > 0) keys.unshift({ time: 0, x: rest[0], y: rest[1], scale: 1, rotation: 0, easing: "linear", src: -1 });
  return { keys, curve: entry?.curve === "smooth" ? "smooth" : "linear", spline: false };
}

function catmullRom(p0, p1, p2, p3, u) {
  return 0.5 * (2 * p1 + (-p0 + p2) * u + (2 * p0 - 5 * p1 + 4 * p2 - p3) * u ** 2 + (-p0 + 3 * p1 - 3 * p2 + p3) * u ** 3);
}

/** The pose {x, y, scale, rotation} at ``frame`` (sample_path in ttm_core/motion/paths.py). */
function samplePose(path, frame) {
  const keys = path.keys;
  let s = 0;
  while (s + 1 < keys.length && keys[s + 1].time <= frame) s += 1;
  const k1 = keys[s];
  if (s + 1 >= keys.length) return { x: k1.x, y: k1.y, scale: k1.scale, rotation: k1.rotation };
  const k2 = keys[s + 1];
  const u = EASINGS[k2.easing]((frame - k1.time) / (k2.time - k1.time));
  let x;
  let y;
  if (path.curve === "smooth") {
    const k0 = s > 0 ? keys[s - 1] : k1;
    const k3 = s + 2 < keys.length ? keys[s + 2] : k2;
    x = catmullRom(k0.x, k1.x, k2.x, k3.x, u);
    y = catmullRom(k0.y, k1.y, k2.y, k3.y, u);
  } else {
    x = k1.x + (k2.x - k1.x) * u;
    y = k1.y + (k2.y - k1.y) * u;
  }
  const scale = Math.exp(Math.log(k1.scale) + (Math.log(k2.scale) - Math.log(k1.scale)) * u);
  return { x, y, scale, rotation: k1.rotation + (k2.rotation - k1.rotation) * u };
}

const round2 = (v) => Math.round(v * 100) / 100;

// ---------------------------------------------------------------- the editor

function el(tag, style = {}, props = {}) {
  const node = document.createElement(tag);
  Object.assign(node.style, style);
  Object.assign(node, props);
  return node;
}

function loadImage(url) {
  return new Promise((resolve, reject) => {
    const image = new Image();
    image.onload = () => resolve(image);
    image.onerror = () => reject(new Error(`cannot load ${url}`));
    image.src = url;
  });
}

function viewURL(file) {
  const query = new URLSearchParams({ filename: file.filename, subfolder: file.subfolder ?? "", type: file.type ?? "temp" });
  return api.apiURL(`/view?${query}`);
}

class PathEditor {
  constructor(node) {
    this.node = node;
    this.frame = 0;
    this.playing = false;
    this.selected = -1; // object index (payload order)
    this.selectedKey = -1; // src index of the selected keyframe of the selected object
    this.undoStack = [];
    this.redoStack = [];
    this.lastText = null;
    this.lastWasHand = false;
    this.scene = null; // {width, height, objects: [{id, name, color, x, y, sprite, mask}], order, image}
    this.drag = null;
    this.view = { scale: 1, ox: 0, oy: 0 };

    this.root = el("div", { display: "flex", flexDirection: "column", gap: "2px", width: "100%", height: "100%",
                            position: "relative", font: "11px sans-serif", color: "#ddd", boxSizing: "border-box" },
                   { className: "ttm-path-editor" });
    // Keys go to a (read-only, invisible) text input: the frontends leave keys typed into inputs to them, so
    // Ctrl+Z, Delete and Space act on the paths here, not on the whole graph (1.32.9's workflow undo listens
    // on window in the capture phase, before any element could stop it).
    this.keys = el("input", { position: "absolute", left: "0", top: "0", width: "1px", height: "1px", opacity: "0",
                              border: "0", padding: "0", pointerEvents: "none" },
                   { readOnly: true, className: "ttm-keys", ariaLabel: "Path editor keyboard shortcuts" });
    this.note = el("div", { minHeight: "14px", color: "#bbb", whiteSpace: "nowrap", overflow: "hidden", textOverflow: "ellipsis" });
    this.stage = el("canvas", { width: "100%", flex: "1 1 0", minHeight: "120px", background: "#111", cursor: "crosshair",
                                touchAction: "none", display: "block" }, { className: "ttm-stage" });
    const bar = el("div", { display: "flex", flexWrap: "wrap", gap: "4px", alignItems: "center" });
    const button = (label, title, fn) => {
      const b = el("button", { font: "11px sans-serif", padding: "1px 6px", cursor: "pointer" }, { textContent: label, title });
      b.addEventListener("click", (event) => { event.stopPropagation(); fn(); this.focus(); });
      bar.append(b);
      return b;
    };
    this.playButton = button("▶", "Play / pause (Space)", () => this.togglePlay());
    button("↶", "Undo (Ctrl+Z)", () => this.undo());
    button("↷", "Redo (Ctrl+Shift+Z)", () => this.redo());
    button("◆", "Keyframe the selected object here (K)", () => this.keyframeHere());
    this.easing = el("select", { font: "11px sans-serif" }, { title: "Easing of the segment arriving at the selected keyframe" });
    for (const name of Object.keys(EASINGS)) this.easing.append(el("option", {}, { value: name, textContent: name }));
    this.easing.addEventListener("change", () => this.setEasing(this.easing.value));
    bar.append(this.easing);
    // Exact values of the selected keyframe (x, y in pixels; scale; rotation in degrees, clockwise).
    this.fields = {};
    for (const [name, title] of [["x", "x (px)"], ["y", "y (px)"], ["scale", "scale (1 = original size)"], ["rotation", "rotation (degrees, clockwise)"]]) {
      const input = el("input", { width: "52px", font: "11px sans-serif" }, { type: "number", step: name === "scale" ? "0.05" : "1", title, placeholder: name });
      input.dataset.field = name;
      input.addEventListener("change", () => this.setField(name, input.value));
      input.addEventListener("keydown", (event) => event.stopPropagation());
      this.fields[name] = input;
      bar.append(input);
    }
    this.smooth = el("input", {}, { type: "checkbox", title: "Smooth curve through the keyframes (Catmull-Rom) instead of straight segments" });
    this.smooth.addEventListener("change", () => this.setCurve(this.smooth.checked));
    const smoothLabel = el("label", { display: "flex", alignItems: "center", gap: "2px" }, { textContent: "smooth" });
    smoothLabel.prepend(this.smooth);
    bar.append(smoothLabel);
    this.frameLabel = el("span", { marginLeft: "auto", fontVariantNumeric: "tabular-nums" });
    bar.append(this.frameLabel);
    this.timeline = el("canvas", { width: "100%", display: "block", background: "#1b1b1b", cursor: "pointer", touchAction: "none" },
                       { className: "ttm-timeline" });
    this.root.append(this.keys, this.note, this.stage, bar, this.timeline);

    this.stage.addEventListener("pointerdown", (e) => this.stageDown(e));
    this.stage.addEventListener("pointermove", (e) => this.stageMove(e));
    this.stage.addEventListener("pointerup", (e) => this.stageUp(e));
    this.timeline.addEventListener("pointerdown", (e) => this.timelineDown(e));
    this.timeline.addEventListener("pointermove", (e) => this.timelineMove(e));
    this.timeline.addEventListener("pointerup", (e) => this.timelineUp(e));
    this.keys.addEventListener("keydown", (e) => this.key(e));
    this.resize = new ResizeObserver(() => this.draw());
    this.resize.observe(this.root);
    // Hand edits of the JSON (typing in the widget, a pasted workflow, another extension) show here.
    this.poll = setInterval(() => this.sync(), 150);
    this.sync();
  }

  // ------------------------------------------------------------ widgets and text

  widget(name) {
    return this.node.widgets?.find((w) => w.name === name);
  }

  get text() {
    const value = this.widget("paths")?.value;
    return typeof value === "string" ? value : "";
  }

  get frames() {
    return Math.max(1, Math.round(Number(this.widget("num_frames")?.value ?? 49)));
  }

  get fps() {
    return Math.max(0.01, Number(this.widget("fps")?.value ?? 16));
  }

  sync() {
    if (!this.scene && this.historyFor !== this.node.id && this.node.id !== undefined && this.node.id !== -1) {
      this.historyFor = this.node.id;
      this.fromHistory().catch(() => {});
    }
    // Other widgets the drawing depends on (not part of the paths' undo history).
    const look = `${this.widget("depth_order")?.value}|${this.frames}|${this.fps}`;
    if (look !== this.lastLook) {
      this.lastLook = look;
      this.draw();
    }
    const text = this.text;
    if (text === this.lastText) return;
    if (this.lastText !== null) {
      // A hand edit: one undo step per run of typing, so undo goes back over it as a whole.
      if (!this.lastWasHand) {
        this.undoStack.push(this.lastText);
        this.redoStack = [];
      }
      this.lastWasHand = true;
    }
    this.lastText = text;
    this.draw();
  }

  write(text) {
    const widget = this.widget("paths");
    if (!widget) return;
    widget.value = text;
    widget.callback?.(text, app.canvas, this.node);
    this.lastText = text;
    this.lastWasHand = false;
    this.node.setDirtyCanvas?.(true, true);
    this.draw();
  }

  commit(data) {
    const text = formatPaths(data);
    const before = this.text;
    if (text === before) return;
    this.undoStack.push(before);
    this.redoStack = [];
    this.write(text);
  }

  undo() {
    this.sync();
    if (!this.undoStack.length) return;
    this.redoStack.push(this.text);
    this.write(this.undoStack.pop());
  }

  redo() {
    this.sync();
    if (!this.redoStack.length) return;
    this.undoStack.push(this.text);
    this.write(this.redoStack.pop());
  }

  // ------------------------------------------------------------ objects and paths

  async setPayload(payload) {
    const [image, ...masks] = await Promise.all([loadImage(viewURL(payload.image)), ...payload.masks.map((m) => loadImage(viewURL(m)))]);
    const { width, height } = payload;
    const objects = payload.objects.map((info, i) => {
      const canvas = el("canvas", {}, { width, height });
      const ctx = canvas.getContext("2d", { willReadFrequently: true });
      ctx.drawImage(masks[i], 0, 0, width, height);
      const pixels = ctx.getImageData(0, 0, width, height);
      const mask = new Uint8Array(width * height);
      const [r, g, b] = info.color;
      for (let p = 0; p < mask.length; p++) {
        const on = pixels.data[p * 4] > 127;
        mask[p] = on ? 1 : 0;
        pixels.data[p * 4 + 3] = on ? 255 : 0;
      }
      ctx.putImageData(pixels, 0, 0);
      // The object's own pixels, tinted in its colour (cut out of the first frame by its mask).
      ctx.globalCompositeOperation = "source-in";
      ctx.drawImage(image, 0, 0, width, height);
      ctx.globalCompositeOperation = "source-atop";
      ctx.fillStyle = `rgba(${r}, ${g}, ${b}, 0.55)`;
      ctx.fillRect(0, 0, width, height);
      return { ...info, sprite: canvas, mask };
    });
    this.scene = { width, height, image, objects, order: payload.order ?? objects.map((o) => o.id) };
    if (this.selected >= objects.length) this.selected = -1;
    this.draw();
  }

  /**
   * The objects of this node's latest run this server remembers (its /history): after a page reload, or when
   * the queued graph was already cached and nothing ran, the editor still shows them.
   */
  async fromHistory() {
    const response = await api.fetchApi("/history?max_items=64");
    if (!response.ok) return;
    const history = await response.json();
    const id = String(this.node.id);
    const runs = Object.values(history).filter((run) => run?.outputs?.[id]?.[PAYLOAD_KEY]?.[0]
      && run.prompt?.[2]?.[id]?.class_type === NODE_TYPE);
    runs.sort((a, b) => (a.prompt?.[0] ?? 0) - (b.prompt?.[0] ?? 0));
    const latest = runs.at(-1);
    if (latest && !this.scene) await this.setPayload(latest.outputs[id][PAYLOAD_KEY][0]);
  }

  /** The JSON entry key of object ``index`` in ``data`` (its name, or its 1-based id), or undefined. */
  entryKey(data, index) {
    const info = this.scene?.objects[index];
    if (!info) return undefined;
    const keys = Object.keys(data.objects ?? {});
    return keys.find((k) => k === info.name) ?? keys.find((k) => k.trim() === String(info.id));
  }

  /** Rows: one per object (after a run), plus paths naming no object ({orphan: true}). */
  rows(data) {
    const rows = [];
    const used = new Set();
    const size = this.scene ? [this.scene.width, this.scene.height] : [1, 1];
    const units = data.units === "pixels" ? "pixels" : "normalized";
    for (const [index, info] of (this.scene?.objects ?? []).entries()) {
      const key = this.entryKey(data, index);
      if (key !== undefined) used.add(key);
      let path = null;
      let problem = null;
      try {
        path = resolvePath(key === undefined ? null : data.objects[key], [info.x, info.y], units, size, this.frames);
      } catch (err) {
        problem = err.message;
      }
      rows.push({ index, key, name: info.name, color: info.color, path, problem });
    }
    for (const key of Object.keys(data.objects ?? {})) {
      if (used.has(key)) continue;
      let path = null;
      try {
        path = resolvePath(data.objects[key], [0, 0], units, size, this.frames);
      } catch {
        path = null;
      }
      rows.push({ index: -1, key, name: key, color: [150, 150, 150], path, orphan: Boolean(this.scene) });
    }
    return rows;
  }

  pose(row, frame) {
    if (this.drag?.kind === "move" && this.drag.index === row.index && this.drag.live) return { ...samplePose(row.path, frame), ...this.drag.live };
    return samplePose(row.path, frame);
  }

  /** ``data`` with every keyframe position in pixels (the editor writes pixels; normalised values converted). */
  toPixels(data) {
    if (data.units === "pixels") return data;
    const { width, height } = this.scene;
    for (const entry of Object.values(data.objects ?? {})) {
      for (const item of Array.isArray(entry?.keyframes) ? entry.keyframes : []) {
        if (typeof item.x === "number") item.x = round2(item.x * width);
        if (typeof item.y === "number") item.y = round2(item.y * height);
      }
    }
    return { version: data.version ?? 1, units: "pixels", objects: data.objects ?? {} };
  }

  /** The keyframes list of object ``index`` in ``data`` (created; a spline becomes its keyframes). */
  keyframesOf(data, index) {
    const info = this.scene.objects[index];
    data.objects = data.objects ?? {};
    let key = this.entryKey(data, index);
    if (key === undefined) {
      key = info.name;
      data.objects[key] = { keyframes: [] };
    }
    const entry = data.objects[key];
    if (!Array.isArray(entry.keyframes)) {
      const path = resolvePath(entry, [info.x, info.y], "pixels", [this.scene.width, this.scene.height], this.frames);
      const keyframes = path.keys.map((k) => ({ frame: round2(k.time), x: round2(k.x), y: round2(k.y) }));
      data.objects[key] = { keyframes, ...(entry.curve ? { curve: entry.curve } : {}) };
    }
    return data.objects[key].keyframes;
  }

  setKeyframe(index, frame, x, y) {
    const parsed = parsePaths(this.text);
    if (parsed.error) return this.say(`paths: ${parsed.error} - fix the JSON to edit here`);
    const data = this.toPixels(parsed.data);
    const keyframes = this.keyframesOf(data, index);
    const last = this.frames - 1;
    let at = keyframes.findIndex((k) => keyTime(k, last) !== null && Math.abs(keyTime(k, last) - frame) < 1e-6);
    if (at >= 0) {
      keyframes[at].x = round2(x);
      keyframes[at].y = round2(y);
    } else {
      at = keyframes.findIndex((k) => (keyTime(k, last) ?? -1) > frame);
      at = at < 0 ? keyframes.length : at;
      keyframes.splice(at, 0, { frame, x: round2(x), y: round2(y) });
    }
    this.selected = index;
    this.selectedKey = at;
    this.commit(data);
  }

  moveKeyframe(key, src, frame) {
    const parsed = parsePaths(this.text);
    if (parsed.error) return;
    const data = parsed.data;
    const item = data.objects?.[key]?.keyframes?.[src];
    if (!item) return;
    delete item.t;
    item.frame = frame;
    // Keep the keys (frame first, then position) in the order they had.
    const { frame: f, ...rest } = item;
    for (const k of Object.keys(item)) delete item[k];
    Object.assign(item, { frame: f }, rest);
    this.commit(data);
  }

  deleteKeyframe() {
    if (this.selected < 0 || this.selectedKey < 0) return;
    const parsed = parsePaths(this.text);
    if (parsed.error) return;
    const key = this.entryKey(parsed.data, this.selected);
    const keyframes = parsed.data.objects?.[key]?.keyframes;
    if (!Array.isArray(keyframes) || !keyframes[this.selectedKey]) return;
    keyframes.splice(this.selectedKey, 1);
    if (!keyframes.length) delete parsed.data.objects[key];
    this.selectedKey = -1;
    this.commit(parsed.data);
  }

  setEasing(easing) {
    if (this.selected < 0 || this.selectedKey < 0) return this.say("select a keyframe (click its mark) to set its easing");
    const parsed = parsePaths(this.text);
    if (parsed.error) return;
    const key = this.entryKey(parsed.data, this.selected);
    const item = parsed.data.objects?.[key]?.keyframes?.[this.selectedKey];
    if (!item) return;
    if (easing === "linear") delete item.easing;
    else item.easing = easing;
    this.commit(parsed.data);
  }

  /** Set ``name`` (x, y, scale, rotation) of the selected keyframe from a numeric field. */
  setField(name, text) {
    const value = Number(text);
    if (this.selected < 0 || this.selectedKey < 0 || text === "" || !Number.isFinite(value)) return this.draw();
    if (name === "scale" && value <= 0) return this.say("scale must be above 0 (1 = original size)");
    const parsed = parsePaths(this.text);
    if (parsed.error) return;
    const data = name === "x" || name === "y" ? this.toPixels(parsed.data) : parsed.data;
    const key = this.entryKey(data, this.selected);
    const item = data.objects?.[key]?.keyframes?.[this.selectedKey];
    if (!item) return;
    if ((name === "x" || name === "y") && (typeof item.x !== "number" || typeof item.y !== "number")) {
      // x and y go together: the other one from where the keyframe resolves now.
      const resolved = this.lastRows[this.selected].path.keys.find((k) => k.src === this.selectedKey);
      item.x = round2(resolved.x);
      item.y = round2(resolved.y);
    }
    item[name] = round2(value);
    this.commit(data);
  }

  setCurve(smooth) {
    if (this.selected < 0) return;
    const parsed = parsePaths(this.text);
    if (parsed.error) return;
    const key = this.entryKey(parsed.data, this.selected);
    const entry = key === undefined ? undefined : parsed.data.objects[key];
    if (!entry) return this.say("keyframe the object first, then choose its curve");
    if (smooth) entry.curve = "smooth";
    else delete entry.curve;
    this.commit(parsed.data);
  }

  keyframeHere() {
    if (this.selected < 0 || !this.scene) return this.say("select an object first (click it or its row)");
    const data = parsePaths(this.text).data;
    if (!data) return;
    const row = this.rows(data)[this.selected];
    const pose = samplePose(row.path, this.frame);
    this.setKeyframe(this.selected, this.frame, pose.x, pose.y);
  }

  reassign(orphanKey, index) {
    const parsed = parsePaths(this.text);
    if (parsed.error) return;
    const data = parsed.data;
    const name = this.scene.objects[index].name;
    const objects = {};
    for (const [k, v] of Object.entries(data.objects)) objects[k === orphanKey ? name : k] = v;
    data.objects = objects;
    this.commit(data);
  }

  // ------------------------------------------------------------ drawing

  say(text) {
    this.message = text;
    this.draw();
  }

  fit(canvas) {
    const rect = canvas.getBoundingClientRect();
    const w = Math.max(1, Math.round(rect.width));
    const h = Math.max(1, Math.round(rect.height));
    if (canvas.width !== w) canvas.width = w;
    if (canvas.height !== h) canvas.height = h;
    return [w, h];
  }

  draw() {
    if (this.pending) return;
    this.pending = requestAnimationFrame(() => {
      this.pending = 0;
      this.render();
    });
  }

  render() {
    const parsed = parsePaths(this.text);
    const data = parsed.data ?? { objects: {} };
    const rows = this.rows(data);
    this.lastRows = rows;
    const orphans = rows.filter((r) => r.orphan);
    this.frame = Math.min(this.frame, this.frames - 1);
    this.frameLabel.textContent = `frame ${this.frame} / ${this.frames - 1}`;
    let note = this.message ?? "";
    if (parsed.error) note = `paths: ${parsed.error}`;
    else if (!this.scene) note = "Queue the workflow once to see the objects here (the JSON below is what runs).";
    else if (orphans.length) note = `No object named ${orphans.map((r) => JSON.stringify(r.key)).join(", ")}: right-click its row to re-assign it.`;
    else if (!note) note = "Drag an object to keyframe it at this frame; drag marks to retime. Keys: Space, ←/→, Ctrl+Z, K, Del.";
    this.note.textContent = note;
    this.note.style.color = parsed.error || orphans.length ? "#f88" : "#bbb";
    const sel = rows[this.selected];
    const item = sel?.key !== undefined && this.selectedKey >= 0 ? data.objects?.[sel.key]?.keyframes?.[this.selectedKey] : null;
    this.easing.value = item?.easing ?? "linear";
    this.easing.disabled = !item;
    const key = sel?.path?.keys.find((k) => k.src === this.selectedKey && k.src >= 0);
    for (const [name, input] of Object.entries(this.fields)) {
      input.disabled = !item;
      if (document.activeElement !== input) input.value = key ? String(round2(key[name])) : "";
    }
    this.smooth.disabled = !sel || sel.index < 0;
    this.smooth.checked = sel?.path?.curve === "smooth";
    this.renderStage(rows);
    this.renderTimeline(rows);
  }

  renderStage(rows) {
    const [cw, ch] = this.fit(this.stage);
    const ctx = this.stage.getContext("2d", { willReadFrequently: true });
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.fillStyle = "#111";
    ctx.fillRect(0, 0, cw, ch);
    const scene = this.scene;
    if (!scene) return;
    const s = Math.min(cw / scene.width, ch / scene.height);
    this.view = { scale: s, ox: (cw - scene.width * s) / 2, oy: (ch - scene.height * s) / 2 };
    ctx.setTransform(s, 0, 0, s, this.view.ox, this.view.oy);
    ctx.globalAlpha = 0.45;
    ctx.drawImage(scene.image, 0, 0, scene.width, scene.height);
    ctx.globalAlpha = 1;
    // Back to front (the depth order the trajectory is rendered in: the first id is in front).
    const byId = new Map(rows.filter((r) => r.index >= 0).map((r) => [scene.objects[r.index].id, r]));
    const drawOrder = [...this.depthOrder()].reverse().map((id) => byId.get(id)).filter((r) => r && r.path);
    for (const row of drawOrder) {
      const info = scene.objects[row.index];
      const pose = this.pose(row, this.frame);
      ctx.save();
      ctx.translate(pose.x, pose.y);
      ctx.rotate((pose.rotation * Math.PI) / 180);
      ctx.scale(pose.scale, pose.scale);
      ctx.translate(-info.x, -info.y);
      ctx.drawImage(info.sprite, 0, 0);
      ctx.restore();
    }
    for (const row of drawOrder) {
      const [r, g, b] = row.color;
      const colour = `rgb(${r}, ${g}, ${b})`;
      ctx.lineWidth = 1.5 / s;
      ctx.strokeStyle = colour;
      ctx.beginPath();
      for (let f = 0; f < this.frames; f++) {
        const p = samplePose(row.path, f);
        if (f === 0) ctx.moveTo(p.x, p.y);
        else ctx.lineTo(p.x, p.y);
      }
      ctx.stroke();
      for (const k of row.path.keys) {
        const selected = row.index === this.selected && k.src === this.selectedKey && k.src >= 0;
        ctx.fillStyle = selected ? "#fff" : colour;
        ctx.beginPath();
        ctx.arc(k.x, k.y, (selected ? 4 : 2.5) / s, 0, Math.PI * 2);
        ctx.fill();
      }
      const pose = this.pose(row, this.frame);
      ctx.font = `${12 / s}px sans-serif`;
      const label = row.name;
      const tw = ctx.measureText(label).width;
      ctx.fillStyle = "rgba(0, 0, 0, 0.65)";
      ctx.fillRect(pose.x - tw / 2 - 3 / s, pose.y - 20 / s, tw + 6 / s, 15 / s);
      ctx.fillStyle = colour;
      ctx.fillText(label, pose.x - tw / 2, pose.y - 8 / s);
      if (row.index === this.selected) {
        ctx.setLineDash([4 / s, 3 / s]);
        ctx.strokeStyle = "#fff";
        ctx.beginPath();
        ctx.arc(pose.x, pose.y, 6 / s, 0, Math.PI * 2);
        ctx.stroke();
        ctx.setLineDash([]);
      }
    }
  }

  timelineGeometry() {
    const width = this.timeline.width;
    const span = Math.max(1, this.frames - 1);
    const x = (frame) => LABEL_WIDTH + 6 + ((width - LABEL_WIDTH - 14) * frame) / span;
    const frameAt = (px) => Math.round(((px - LABEL_WIDTH - 6) * span) / Math.max(1, width - LABEL_WIDTH - 14));
    return { x, frameAt };
  }

  renderTimeline(rows) {
    const height = RULER_HEIGHT + Math.max(1, rows.length) * ROW_HEIGHT + 4;
    this.timeline.style.height = `${height}px`;
    const [w, h] = this.fit(this.timeline);
    const ctx = this.timeline.getContext("2d");
    const { x } = this.timelineGeometry();
    ctx.fillStyle = "#1b1b1b";
    ctx.fillRect(0, 0, w, h);
    ctx.font = "10px sans-serif";
    ctx.fillStyle = "#888";
    const step = Math.max(1, Math.ceil(this.frames / 10));
    for (let f = 0; f < this.frames; f += step) {
      ctx.fillRect(x(f), RULER_HEIGHT - 5, 1, 5);
      ctx.fillText(String(f), x(f) + 2, RULER_HEIGHT - 6);
    }
    rows.forEach((row, i) => {
      const top = RULER_HEIGHT + i * ROW_HEIGHT;
      const [r, g, b] = row.color;
      if (row.index === this.selected && row.index >= 0) {
        ctx.fillStyle = "#2c2c2c";
        ctx.fillRect(0, top, w, ROW_HEIGHT);
      }
      ctx.fillStyle = row.orphan ? "#f88" : `rgb(${r}, ${g}, ${b})`;
      ctx.fillText((row.orphan ? "? " : "") + row.name, 4, top + 13, LABEL_WIDTH - 6);
      ctx.fillStyle = "#333";
      ctx.fillRect(x(0), top + ROW_HEIGHT / 2, x(this.frames - 1) - x(0), 1);
      for (const k of row.path?.keys ?? []) {
        if (k.src < 0 && !row.path.spline) continue;
        let time = k.time;
        if (this.drag?.kind === "mark" && this.drag.row === i && this.drag.src === k.src && this.drag.live !== undefined) time = this.drag.live;
        const cx = x(time);
        const cy = top + ROW_HEIGHT / 2;
        const selected = row.index === this.selected && k.src === this.selectedKey && k.src >= 0;
        ctx.fillStyle = k.src < 0 ? "#666" : selected ? "#fff" : `rgb(${r}, ${g}, ${b})`;
        ctx.beginPath();
        ctx.moveTo(cx, cy - 5);
        ctx.lineTo(cx + 5, cy);
        ctx.lineTo(cx, cy + 5);
        ctx.lineTo(cx - 5, cy);
        ctx.fill();
      }
    });
    ctx.fillStyle = "#e44";
    ctx.fillRect(x(this.frame) - 0.5, 0, 2, h);
  }

  // ------------------------------------------------------------ pointer and keys

  stagePoint(event) {
    const rect = this.stage.getBoundingClientRect();
    const cx = ((event.clientX - rect.left) * this.stage.width) / rect.width;
    const cy = ((event.clientY - rect.top) * this.stage.height) / rect.height;
    return [(cx - this.view.ox) / this.view.scale, (cy - this.view.oy) / this.view.scale];
  }

  /** Object ids front to back: the depth_order widget as it reads now (Image To Motion's rule), else the run's. */
  depthOrder() {
    const objects = this.scene.objects;
    const text = String(this.widget("depth_order")?.value ?? "");
    if (!text.trim()) return objects.map((o) => o.id);
    const ids = text.split(",").map((p) => p.trim()).filter(Boolean)
      .map((p) => objects.find((o) => o.name === p)?.id ?? objects.find((o) => String(o.id) === p)?.id);
    const complete = ids.length === objects.length && new Set(ids).size === ids.length && ids.every((id) => id !== undefined);
    return complete ? ids : this.scene.order;
  }

  /** The front-most object under image point (x, y) at the current frame (row), or undefined. */
  hit(x, y) {
    const scene = this.scene;
    const rows = this.lastRows ?? [];
    for (const id of this.depthOrder()) {
      const row = rows.find((r) => r.index >= 0 && scene.objects[r.index].id === id);
      if (!row?.path) continue;
      const info = scene.objects[row.index];
      const pose = samplePose(row.path, this.frame);
      const a = (-pose.rotation * Math.PI) / 180;
      const dx = (x - pose.x) / pose.scale;
      const dy = (y - pose.y) / pose.scale;
      const mx = Math.floor(info.x + dx * Math.cos(a) - dy * Math.sin(a));
      const my = Math.floor(info.y + dx * Math.sin(a) + dy * Math.cos(a));
      if (mx >= 0 && my >= 0 && mx < scene.width && my < scene.height && info.mask[my * scene.width + mx]) return row;
    }
    return undefined;
  }

  stageDown(event) {
    if (event.button !== 0 || !this.scene) return;
    event.stopPropagation();
    event.preventDefault();
    this.focus();
    this.stopPlay();
    const [x, y] = this.stagePoint(event);
    const row = this.hit(x, y);
    if (!row) {
      this.selected = -1;
      this.selectedKey = -1;
      return this.draw();
    }
    this.selected = row.index;
    this.selectedKey = row.path.keys.find((k) => k.src >= 0 && Math.abs(k.time - this.frame) < 1e-6)?.src ?? -1;
    const pose = samplePose(row.path, this.frame);
    this.drag = { kind: "move", index: row.index, start: [x, y], pose, live: null };
    this.stage.setPointerCapture(event.pointerId);
    this.draw();
  }

  stageMove(event) {
    if (this.drag?.kind !== "move") return;
    event.stopPropagation();
    const [x, y] = this.stagePoint(event);
    const { start, pose } = this.drag;
    this.drag.live = { x: pose.x + x - start[0], y: pose.y + y - start[1] };
    this.draw();
  }

  stageUp(event) {
    if (this.drag?.kind !== "move") return;
    event.stopPropagation();
    const drag = this.drag;
    this.drag = null;
    this.stage.releasePointerCapture?.(event.pointerId);
    if (drag.live && Math.hypot(drag.live.x - drag.pose.x, drag.live.y - drag.pose.y) * this.view.scale >= 1) {
      this.setKeyframe(drag.index, this.frame, drag.live.x, drag.live.y);
    } else {
      this.draw();
    }
  }

  timelinePoint(event) {
    const rect = this.timeline.getBoundingClientRect();
    return [((event.clientX - rect.left) * this.timeline.width) / rect.width, ((event.clientY - rect.top) * this.timeline.height) / rect.height];
  }

  timelineDown(event) {
    if (event.button !== 0 && event.button !== 2) return;
    event.stopPropagation();
    event.preventDefault();
    this.focus();
    this.stopPlay();
    const [px, py] = this.timelinePoint(event);
    const rows = this.lastRows ?? [];
    const i = Math.floor((py - RULER_HEIGHT) / ROW_HEIGHT);
    const row = py >= RULER_HEIGHT ? rows[i] : undefined;
    if (event.button === 2) return this.reassignMenu(row);
    const { x, frameAt } = this.timelineGeometry();
    if (row) {
      if (row.index >= 0) this.selected = row.index;
      const mark = (row.path?.keys ?? []).filter((k) => k.src >= 0).find((k) => Math.abs(x(k.time) - px) <= MARK_HIT);
      if (mark) {
        this.selectedKey = mark.src;
        const keys = row.path.keys.filter((k) => k.src >= 0);
        const at = keys.indexOf(mark);
        const low = at > 0 ? Math.floor(keys[at - 1].time) + 1 : 0;
        const high = at + 1 < keys.length ? Math.ceil(keys[at + 1].time) - 1 : this.frames - 1;
        this.drag = { kind: "mark", row: i, index: row.index, key: row.key, src: mark.src, low, high, from: mark.time, live: undefined };
        this.timeline.setPointerCapture(event.pointerId);
        return this.draw();
      }
      if (px < LABEL_WIDTH) return this.draw();
    }
    this.drag = { kind: "scrub" };
    this.timeline.setPointerCapture(event.pointerId);
    this.setFrame(frameAt(px));
  }

  timelineMove(event) {
    if (!this.drag || (this.drag.kind !== "mark" && this.drag.kind !== "scrub")) return;
    event.stopPropagation();
    const [px] = this.timelinePoint(event);
    const frame = this.timelineGeometry().frameAt(px);
    if (this.drag.kind === "scrub") return this.setFrame(frame);
    this.drag.live = Math.min(this.drag.high, Math.max(this.drag.low, frame));
    this.draw();
  }

  timelineUp(event) {
    if (!this.drag || (this.drag.kind !== "mark" && this.drag.kind !== "scrub")) return;
    event.stopPropagation();
    const drag = this.drag;
    this.drag = null;
    this.timeline.releasePointerCapture?.(event.pointerId);
    if (drag.kind === "mark" && drag.live !== undefined && drag.live !== drag.from) {
      this.moveKeyframe(drag.key, drag.src, drag.live);
      this.setFrame(drag.live);
    }
    this.draw();
  }

  reassignMenu(row) {
    if (!row?.orphan || !this.scene) return;
    const parsed = parsePaths(this.text);
    const free = this.scene.objects.map((o, i) => i).filter((i) => this.entryKey(parsed.data, i) === undefined);
    if (!free.length) return this.say(`every object already has a path: delete ${JSON.stringify(row.key)} in the JSON`);
    const menu = this.scene.objects.filter((_, i) => free.includes(i)).map((o) => o.name).join(", ");
    const answer = window.prompt(`Re-assign the path of "${row.key}" to which object? (${menu})`, this.scene.objects[free[0]].name);
    const index = this.scene.objects.findIndex((o) => o.name === answer);
    if (index >= 0 && free.includes(index)) this.reassign(row.key, index);
  }

  setFrame(frame) {
    this.frame = Math.min(this.frames - 1, Math.max(0, Math.round(frame)));
    this.message = null;
    this.draw();
  }

  togglePlay() {
    if (this.playing) return this.stopPlay();
    this.playing = true;
    this.playButton.textContent = "⏸";
    const start = performance.now();
    const from = this.frame;
    const tick = (now) => {
      if (!this.playing) return;
      this.frame = (from + Math.floor(((now - start) * this.fps) / 1000)) % this.frames;
      this.render();
      this.playHandle = requestAnimationFrame(tick);
    };
    this.playHandle = requestAnimationFrame(tick);
  }

  focus() {
    this.keys.focus({ preventScroll: true });
  }

  stopPlay() {
    if (!this.playing) return;
    this.playing = false;
    cancelAnimationFrame(this.playHandle);
    this.playButton.textContent = "▶";
  }

  key(event) {
    const mod = event.ctrlKey || event.metaKey;
    const k = event.key;
    let handled = true;
    if (mod && (k === "z" || k === "Z") && !event.shiftKey) this.undo();
    else if (mod && ((k === "z" || k === "Z") && event.shiftKey || k === "y" || k === "Y")) this.redo();
    else if (mod) handled = false;
    else if (k === " ") this.togglePlay();
    else if (k === "ArrowLeft") this.setFrame(this.frame - (event.shiftKey ? 10 : 1));
    else if (k === "ArrowRight") this.setFrame(this.frame + (event.shiftKey ? 10 : 1));
    else if (k === "Home") this.setFrame(0);
    else if (k === "End") this.setFrame(this.frames - 1);
    else if (k === "k" || k === "K") this.keyframeHere();
    else if (k === "Delete" || k === "Backspace") this.deleteKeyframe();
    else if (k === "[" || k === "]") this.jumpKey(k === "]" ? 1 : -1);
    else if (k === "Tab" && this.scene) {
      this.selected = (this.selected + 1) % this.scene.objects.length;
      this.selectedKey = -1;
      this.draw();
    } else handled = false;
    if (handled) {
      // The graph's own shortcuts (Ctrl+Z, Delete, Space) must not act on the canvas behind the editor.
      event.preventDefault();
      event.stopPropagation();
    }
  }

  jumpKey(direction) {
    const row = this.lastRows?.[this.selected];
    const keys = (row?.path?.keys ?? []).filter((k) => k.src >= 0);
    const next = direction > 0 ? keys.find((k) => k.time > this.frame + 1e-6) : [...keys].reverse().find((k) => k.time < this.frame - 1e-6);
    if (!next) return;
    this.selectedKey = next.src;
    this.setFrame(next.time);
  }

  minHeight() {
    const rows = Math.max(1, this.lastRows?.length ?? Object.keys(parsePaths(this.text).data?.objects ?? {}).length);
    return STAGE_HEIGHT + TOOLBAR_HEIGHT + 20 + RULER_HEIGHT + rows * ROW_HEIGHT + 8;
  }

  dispose() {
    this.stopPlay();
    clearInterval(this.poll);
    this.resize.disconnect();
  }
}

// ---------------------------------------------------------------- registration

function attach(node) {
  if (typeof node.addDOMWidget !== "function") {
    // Degrade to the JSON widget, saying why.
    const note = node.addWidget?.("button", "Path editor needs a newer ComfyUI frontend (edit the paths JSON)", null, () => {});
    if (note) note.serialize = false;
    return;
  }
  const editor = new PathEditor(node);
  const widget = node.addDOMWidget("ttm_path_editor", "ttm_path_editor", editor.root, {
    serialize: false,
    hideOnZoom: false,
    getValue: () => undefined,
    setValue: () => {},
    getMinHeight: () => editor.minHeight(),
  });
  widget.serialize = false; // not in widgets_values either: the saved workflow is the same without the extension
  node.ttmPathEditor = editor;
  const size = node.computeSize?.() ?? node.size;
  node.setSize?.([Math.max(node.size[0], 520), Math.max(node.size[1], size[1])]);
  const removed = node.onRemoved;
  node.onRemoved = function (...args) {
    editor.dispose();
    return removed?.apply(this, args);
  };
}

app.registerExtension({
  name: "ThroughTheMask.PathEditor",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData?.name !== NODE_TYPE) return;
    const created = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function (...args) {
      const result = created?.apply(this, args);
      attach(this);
      return result;
    };
    const executed = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (output, ...args) {
      const result = executed?.apply(this, [output, ...args]);
      const payload = output?.[PAYLOAD_KEY]?.[0];
      if (payload && this.ttmPathEditor) {
        this.ttmPathEditor.setPayload(payload).catch((err) => this.ttmPathEditor.say(`objects preview: ${err.message}`));
      }
      return result;
    };
  },
});
