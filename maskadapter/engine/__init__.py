"""The engine, in the order data flows: ``images`` and ``transforms`` (reading photos; all
resizing, coordinate checks and coordinate mapping), ``predictor`` and ``generator`` (SAM-2
masks from prompts and "segment everything", with ``mask_settings``; the generator decides
on ``low_res_masks`` bounds and ``bounded_nms``), ``mask_set`` (the one container of masks
and their scores), ``clip_features`` and ``vocabulary`` (CLIP features, mask embeddings,
class names and their text embeddings), ``weights`` (building the models), ``session``
(what an image costs, kept once), ``painting`` (label maps), ``results`` (segments and
label maps at the original size) and ``segmenter`` (all of it, behind one object).
``runtime`` holds devices, precision and running out of device memory; ``sam2_internals``
every use of sam2's private members (and the check of sam2's version)."""
