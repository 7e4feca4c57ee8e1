"""Make the UI-format (drag-and-drop) twin of an API-format workflow with the real frontend.

ComfyUI's own frontend loads the API JSON (`app.loadApiJson`), the nodes are laid out in
the columns given below, a note is added, and `app.graph.serialize()` is saved. The API file
is then rewritten from `app.graphToPrompt()`, so it lists every widget value the UI fills in
(new optional inputs at their defaults) and the two stay identical node for node. Using the
frontend guarantees both files are exactly what ComfyUI itself writes.
Run: .venv/bin/python tools/make_ui_workflow.py workflows/X_api.json [--note TEXT] [--frontend VERSION]

The committed twins come from ComfyUI's own frontend (the default), so they do not change with the
frontend a user runs; ``--frontend 1.58.1`` makes them with the newest one (make setup unpacks it).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tools.browser import comfy_page, frontend_version  # noqa: E402
from tools.comfy_harness import NEWEST_FRONTEND, ComfyServer, frontend_root  # noqa: E402

LAYOUT_JS = """
async ([api, note]) => {
  // Async (and queued behind other graph loads) from 1.58.1 on; awaiting 1.32.9's plain return is harmless.
  await app.loadApiJson(api, 'workflow');
  // Columns by graph depth: a node sits one column right of its deepest input.
  const depth = {};
  const ids = Object.keys(api);
  const visit = (id) => {
    if (depth[id] !== undefined) return depth[id];
    let d = 0;
    for (const v of Object.values(api[id].inputs || {})) {
      if (Array.isArray(v)) d = Math.max(d, visit(String(v[0])) + 1);
    }
    return (depth[id] = d);
  };
  ids.forEach(visit);
  const next = {};
  for (const id of ids) {
    const node = app.graph.getNodeById(Number(id));
    const col = depth[id];
    const y = next[col] ?? 80;
    const width = Math.max(node.size[0], node.type.startsWith('TTM_') ? 380 : 320);
    node.size = [width, node.computeSize()[1]];
    if (node.type === 'TTM_ImageToMotion' || node.type === 'TTM_PromptDecompose') node.size[1] += 160;
    node.pos = [40 + col * 430, y];
    next[col] = y + node.size[1] + 70;
  }
  if (note) {
    const n = LiteGraph.createNode('MarkdownNote') || LiteGraph.createNode('Note');
    n.pos = [40, (next[0] ?? 80) + 20];
    n.size = [380, 260];
    n.widgets[0].value = note;
    app.graph.add(n);
  }
  app.graph.setDirtyCanvas(true, true);
  // JSON.stringify drops undefined fields (evaluate() would turn them into nulls the
  // frontend's schema rejects).
  const prompt = (await app.graphToPrompt()).output;
  return JSON.stringify({graph: app.graph.serialize(), prompt});
}
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("api_workflow", type=Path)
    parser.add_argument("--note", default=None,
                        help="markdown shown in a note node (default: the UI twin's current note)")
    parser.add_argument("--frontend", default=None,
                        help=f"frontend version to write with (default: ComfyUI's own; {NEWEST_FRONTEND}: the newest)")
    options = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    api = json.loads(options.api_workflow.read_text())
    target = options.api_workflow.with_name(options.api_workflow.name.replace("_api.json", ".json"))
    if options.note is None and target.exists():
        notes = [n["widgets_values"][0] for n in json.loads(target.read_text())["nodes"]
                 if n["type"] in ("MarkdownNote", "Note")]
        options.note = notes[0] if notes else ""
    root = frontend_root(options.frontend) if options.frontend else None
    with tempfile.TemporaryDirectory(prefix="ttm-ui-") as base, ComfyServer(Path(base), frontend_root=root) as server, \
            comfy_page(server.url) as page:
        logging.info("laying out %s with frontend %s", options.api_workflow.name, frontend_version(page))
        made = json.loads(page.evaluate(LAYOUT_JS, [api, options.note or ""]))
    graph, prompt = made["graph"], made["prompt"]
    if sorted(prompt) != sorted(api):
        raise SystemExit(f"the frontend turned {sorted(api)} into {sorted(prompt)}")
    target.write_text(json.dumps(graph, indent=1) + "\n")
    options.api_workflow.write_text(json.dumps({k: prompt[k] for k in sorted(prompt, key=int)}, indent=2) + "\n")
    logging.info("wrote %s (%d nodes) and refreshed %s", target, len(graph["nodes"]), options.api_workflow.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
