"""What a result becomes: ``render`` (overlay, legend, side by side) and ``export`` (label
map PNG, segments JSON with COCO RLE masks)."""
