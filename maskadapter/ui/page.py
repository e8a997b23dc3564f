"""The page's own style and script, handed to ``launch(css=..., js=...)``.

The script makes the Automatic tab's picture explorable beyond what Gradio's
``AnnotatedImage`` does by itself (hovering its legend highlights a segment, clicking it
selects one): pointing at a segment in the picture or in the segment table highlights
it the same way, and clicking a segment in the picture selects it. It finds the segment
under the pointer by reading one pixel of each layer (topmost first) and forwards the
event to that layer's legend entry, so Gradio's own highlight and select do the rest.
"""

CSS = """
#banner {font-size: 0.95em}
.gradio-container {max-width: 1400px !important}
.explorer .image-container {cursor: pointer}
.point-legend {display: flex; flex-wrap: wrap; gap: 4px 14px; font-size: 0.95em}
.point-legend .legend-entry {display: inline-flex; align-items: center; gap: 6px}
.point-legend .swatch {display: inline-block; width: 14px; height: 14px; border: 1px solid #444}
.status-line {min-height: 2.2em}
.segment-table td, .segment-table th, .segment-table td *, .segment-table th * {
  white-space: normal !important; overflow-wrap: normal !important; word-break: normal !important
}
@media (max-width: 600px) {
  .segment-table td, .segment-table th {padding: 4px 3px !important; font-size: 12px !important}
}
"""

JS = """
() => {
  const probe = document.createElement("canvas");
  probe.width = probe.height = 1;
  const pen = probe.getContext("2d", { willReadFrequently: true });
  const legend = (view) => view.querySelectorAll(".legend .legend-item");

  function layerAt(view, event) {
    const base = view.querySelector("img.base-image");
    if (!base || !base.naturalWidth) return -1;
    const box = base.getBoundingClientRect();
    const x = Math.floor(((event.clientX - box.left) / box.width) * base.naturalWidth);
    const y = Math.floor(((event.clientY - box.top) / box.height) * base.naturalHeight);
    if (x < 0 || y < 0 || x >= base.naturalWidth || y >= base.naturalHeight) return -1;
    const layers = view.querySelectorAll("img.mask");
    for (let i = layers.length - 1; i >= 0; i--) {
      const layer = layers[i];
      if (!layer.complete || !layer.naturalWidth) continue;
      pen.clearRect(0, 0, 1, 1);
      pen.drawImage(layer, x, y, 1, 1, 0, 0, 1, 1);
      if (pen.getImageData(0, 0, 1, 1).data[3] > 0) return i;
    }
    return -1;
  }

  let lit = null;  // the legend entry this script highlighted
  function light(entry) {
    if (entry === lit) return;
    if (lit) lit.dispatchEvent(new MouseEvent("mouseout", { bubbles: true }));
    lit = entry;
    if (entry) entry.dispatchEvent(new MouseEvent("mouseover", { bubbles: true }));
  }
  function entryNamed(view, name) {
    for (const entry of legend(view)) if (entry.textContent.trim() === name) return entry;
    return null;
  }

  document.addEventListener("mousemove", (event) => {
    const target = event.target instanceof Element ? event.target : null;
    const picture = target && target.closest(".explorer .image-container");
    if (picture) {
      const view = picture.closest(".explorer");
      const i = layerAt(view, event);
      light(i >= 0 ? legend(view)[i] || null : null);
      return;
    }
    const row = target && target.closest(".explorer-table [role=row][data-index]");
    if (row) {
      const view = document.querySelector(".explorer");
      const cell = row.querySelector("[role=gridcell], td");
      light(view && cell ? entryNamed(view, cell.textContent.trim()) : null);
      return;
    }
    if (lit && !(target && target.closest(".explorer .legend"))) light(null);
  });

  document.addEventListener("click", (event) => {
    const target = event.target instanceof Element ? event.target : null;
    const picture = target && target.closest(".explorer .image-container");
    if (!picture) return;
    const view = picture.closest(".explorer");
    const i = layerAt(view, event);
    const entry = i >= 0 ? legend(view)[i] : null;
    if (entry) entry.click();
  });
}
"""
