"""The benchmark's figures as a table on stdout (``maskadapter.cli.benchmark``)."""

from __future__ import annotations

from maskadapter.cli.benchmark_help import help_rows
from maskadapter.cli.benchmark_rate import efficiency_rows


def print_table(figures: dict) -> None:
    rows = [("stage", "wall / user CPU / system CPU")]
    for name, wall in figures["stages_s"].items():
        user, system = figures["stages_cpu_s"].get(name, (0.0, 0.0))
        rows.append((f"  {name}", f"{wall:.2f} s / {user:.1f} s / {system:.1f} s"))
    rows += efficiency_rows(figures)
    rows += [
        ("masks kept", str(figures["masks"])),
        ("mask generation outside networks", f"{100 * figures['mask_generation_outside_networks']:.1f} %"),
        ("decoder prompts per call (measured)", str(figures["decoder_prompts_per_call"])),
        ("re-label speed-up vs end to end", f"{figures['relabel_speedup']:.1f}x"),
    ]
    steps = figures["progressive"]
    times = ", ".join(f"{s['points']} points {s['seconds']:.1f} s" for s in steps["steps"])
    rows.append(("progressive: picture after", times))
    first, total = 100 * steps["first_vs_one_shot"], 100 * steps["total_vs_one_shot"]
    rows.append(("  first picture / whole run vs end to end", f"{first:.0f} % / {total:.0f} %"))
    if "sam2" in figures:
        ref = figures["sam2"]
        line = f"{ref['wall_s']:.2f} s ({ref['user_s']:.1f} s user, {ref['sys_s']:.1f} s system), {ref['masks']} masks"
        rows += [
            ("sam2's generator alone (own process, float32)", line),
            ("our whole path (end_to_end) vs sam2's generator", f"{figures['speedup_vs_sam2']:.2f}x faster"),
        ]
    if "precision_change" in figures:
        change = figures["precision_change"]
        rows += [
            (f"{' vs '.join(change['precisions'])}: masks", "{} / {}".format(*change["masks"])),
            ("  masks matched (IoU >= 0.5)", str(change["matched_masks"])),
            ("  matched mask pixels changed", f"{100 * change['matched_pixels_changed']:.3f} %"),
            ("  matched masks whose label changed", str(change["matched_labels_changed"])),
            ("  label map pixels changed", f"{100 * change['label_map_pixels_changed']:.3f} %"),
        ]
    if "batch_images_per_s" in figures:
        line = f"{figures['batch_images_per_s']:.3f} images/s ({figures['batch_images']} images)"
        rows.append(("batch, local engine", line))
    cpu = figures["process_cpu_s"]
    share = f"{100 * cpu['sys_share']:.1f} % of user"
    rows.append(("process CPU (whole run)", f"{cpu['user']:.1f} s user, {cpu['sys']:.1f} s system ({share})"))
    rows.append(("peak RSS", f"{figures['peak_rss_bytes'] / 2**30:.2f} GiB"))
    rows.append(("RSS after model load", f"{figures['rss_after_load_bytes'] / 2**30:.2f} GiB"))
    if "cuda_max_allocated_bytes" in figures:
        rows.append(("CUDA max allocated", f"{figures['cuda_max_allocated_bytes'] / 2**30:.2f} GiB"))
    if "help_s" in figures:
        rows += help_rows(figures["help_s"])
    width = max(len(name) for name, _ in rows)
    cpu = figures["cpu"]
    print(
        f"{figures['models']} on {figures['device']} ({figures['precision']}), "
        f"image {figures['image'][1]}x{figures['image'][0]}\n"
        f"CPU: {cpu['model']}, {cpu['threads']} threads, {cpu['capability']}, flags: {' '.join(cpu['flags']) or 'none'}"
    )
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
