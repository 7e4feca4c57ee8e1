// Through-The-Mask: Video Combine's preview plays by itself, muted and looping (as VideoHelperSuite's does),
// instead of sitting paused on frame 0 - which is the input image, so nothing seemed to have changed.
//
// The frontend draws the preview itself (a <video> whose src is the /view URL of the written file); after the
// node's result arrives this finds the page's <video> elements showing those files and sets them to play.
// Public extension API only (registerExtension, beforeRegisterNodeDef, onExecuted).

import { app } from "../../scripts/app.js";

const VIDEO_NODES = new Set(["TTM_VideoCombine"]);
const VIDEO_FILE = /\.(mp4|webm|mov|mkv)$/i;
const LOOK_FOR_MS = 10_000;

function playWhenShown(filenames) {
  const wanted = filenames.map((name) => encodeURIComponent(name));
  const started = performance.now();
  const done = new Set();
  const look = () => {
    for (const video of document.querySelectorAll("video")) {
      if (done.has(video) || !wanted.some((name) => video.src.includes(name))) continue;
      done.add(video);
      video.muted = true; // browsers only autoplay muted media
      video.loop = true;
      video.autoplay = true;
      video.playsInline = true;
      video.play?.().catch(() => {}); // a page without a user gesture yet still plays muted video
    }
    if (done.size < wanted.length && performance.now() - started < LOOK_FOR_MS) setTimeout(look, 200);
  };
  look();
}

app.registerExtension({
  name: "ThroughTheMask.VideoPreview",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!VIDEO_NODES.has(nodeData?.name)) return;
    const executed = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (output, ...args) {
      const result = executed?.apply(this, [output, ...args]);
      const files = (output?.images ?? []).map((item) => item?.filename).filter((name) => VIDEO_FILE.test(name ?? ""));
      if (files.length) playWhenShown(files);
      return result;
    };
  },
});
