"""The engine, in the order data flows: ``images`` and ``transforms`` (reading photos; all
resizing and coordinate mapping), ``predictor`` and ``generator`` (SAM-2 masks from prompts
and "segment everything", with ``mask_settings``), ``clip_features`` and ``vocabulary`` (CLIP
features, mask embeddings, class names and their text embeddings), ``weights`` (building the
models), ``session`` (what an image costs, kept once), ``painting`` (label maps) and
``segmenter`` (all of it, behind one object). ``runtime`` holds devices and precision."""
