"""Render profile reports as a rich table and as Markdown."""

from rich.table import Table

COLUMNS = ["paradigm", "model", "quant", "params", "batch", "steps", "passes/img", "GFLOPs/img",
           "latency", "images/s", "peak mem", "GFLOP/s", "% peak"]
REFERENCE_COLUMNS = ["paradigm", "model", "batch", "MLX loop", "torch loop", "torch device",
                     "torch/MLX", "passes/img (MLX, torch)", "prefill, per token (MLX; torch)"]
DECODE_COLUMNS = ["model", "quant", "batch", "prompt tokens", "prefill", "s/token",
                  "weights/token", "bound s/token", "% of bound"]
CLAIMS = {"fewest_flops": "fewest FLOPs per image",
          "lowest_latency_batch_1": "lowest latency at batch 1",
          "highest_throughput": "highest throughput at the largest batch that fitted"}


def _row(r: dict) -> list[str]:
    quant = r.get("quantization")
    head = [r["paradigm"], r["size"] or r["model"],
            f"{quant['bits']}-bit" if isinstance(quant, dict) else "-", f"{r['parameters'] / 1e6:.1f}M",
            str(r["batch_size"]), str(r["steps"]), str(r["forward_passes_per_image"]),
            f"{r['gflops_per_image']:.1f}"]
    if r.get("status") != "ok":
        return head + ["out of memory", "-", f"{r['peak_memory_gb']:.2f} GB", "-", "-"]
    mark = "*" if r["extrapolated"] else ""
    share = f"{100 * r['share_of_peak']:.1f}%" if r.get("share_of_peak") is not None else "-"
    return head + [f"{r['latency_s']['median']:.2f} s{mark}", f"{r['images_per_s']:.3f}{mark}",
                   f"{r['peak_memory_gb']:.2f} GB", f"{r['achieved_gflops_per_s']:.1f}", share]


def _token_stages(mlx: dict, torch: dict) -> str:
    """Next-token records' prefill and median decode pass in ms, MLX's then torch's ("-" for
    other loops)."""
    def stages(r: dict) -> str:
        prefill, token = r["stages_s"].get("prefill"), r["stages_s"].get("per_token_decode")
        return f"{prefill * 1e3:.3g}, " + ("-" if token is None else f"{token * 1e3:.3g}")
    if mlx["stages_s"].get("prefill") is None:
        return "-"
    return f"{stages(mlx)}; {stages(torch)} ms"


def _reference_rows(report: dict) -> list[list[str]]:
    mlx = {(r["model"], r["batch_size"]): r for r in report["results"] if r.get("status") == "ok"}
    rows = []
    for t in report.get("reference") or []:
        m = mlx.get((t["model"], t["batch_size"]))
        if m is None or t.get("status") != "ok":
            continue
        mlx_loop, torch_loop = m["stages_s"]["sampling"], t["stages_s"]["sampling"]
        rows.append([m["paradigm"], m["size"] or m["model"], str(m["batch_size"]),
                     f"{mlx_loop:.2f} s", f"{torch_loop:.2f} s",
                     t.get("label") or f"{t['device']} ({t.get('torch_threads')} threads)",
                     f"{torch_loop / mlx_loop:.2f}x",
                     f"{m['forward_passes_per_image']}, {t['forward_passes_per_image']}",
                     _token_stages(m, t)])
    return rows


def _decode_rows(report: dict) -> list[list[str]]:
    """Next-token records: the prefill and the time per decoded token, apart, and at batch 1
    how near the decode comes to the weight-bandwidth bound."""
    rows = []
    for r in report["results"]:
        stages = r.get("stages_s") or {}
        if r.get("status") != "ok" or not stages.get("per_token_decode"):
            continue
        quant = r.get("quantization")
        fraction = r.get("bandwidth_fraction")
        rows.append([r["size"] or r["model"],
                     f"{quant['bits']}-bit" if isinstance(quant, dict) else "-",
                     str(r["batch_size"]), str(r.get("prompt_tokens") or "-"),
                     f"{stages['prefill']:.3f} s", f"{stages['per_token_decode']:.4f} s",
                     f"{r['weight_bytes_per_token'] / 1e6:.0f} MB"
                     if r.get("weight_bytes_per_token") else "-",
                     f"{r['bandwidth_bound_s_per_token']:.4f} s" if fraction else "-",
                     f"{100 * fraction:.0f}%" if fraction else "-"])
    return rows


def _decode_note(report: dict) -> str:
    peak = report["environment"].get("peak") or {}
    bandwidth = (f"{peak['bandwidth_gbs']:.1f} GB/s, {peak.get('bandwidth_source')}"
                 if peak.get("bandwidth_gbs") else "no bandwidth known for this device")
    return ("Prefill: the first step (the prefix of both CFG rows and the first token); s/token: "
            "the median later step. Bound: the weight bytes one decode step reads (every weight, "
            f"one row of each embedding table) over the memory bandwidth ({bandwidth}); "
            "% of bound: bound / measured s/token, at batch 1.")


def finding_lines(report: dict) -> list[str]:
    lines = []
    for f in report.get("findings", []):
        verdict = "agrees with" if f["agrees"] else "differs from"
        lines.append(f"{f['group']}: {CLAIMS[f['claim']]}: {f['paradigm']} ({f['model']}, batch "
                     f"{f['batch_size']}); {verdict} the study ({f['study']}).")
    return lines


def _footnotes(report: dict) -> list[str]:
    env = report["environment"]
    peak = env.get("peak") or {}
    notes = [f"Device: {env['device']} ({env['backend']}), {env.get('gpu') or env['processor']}, "
             f"{env['cpu_count']} cores; MLX {env['mlx_version']}; BLAS: {env['blas']}.",
             "Latency is the median wall time of one batch over the trials; "
             "images/s is batch size / latency."]
    if peak.get("fp32_tflops"):
        notes.append(f"% peak: achieved FLOP/s over the device peak ({peak['source']}: "
                     f"{peak['fp32_tflops'] * 1e3:.0f} GFLOP/s fp32).")
    notes.append(report["flops_convention"])
    extrapolated = [r for r in report["results"] if r.get("extrapolated")]
    if extrapolated:
        notes.append("* extrapolated: the sampling loop was timed over fewer steps than the full "
                     "plan and scaled to the full step count (measured/total steps: "
                     + ", ".join(sorted({f"{r['paradigm']} {r['measured_steps']}/{r['steps']}"
                                         for r in extrapolated})) + ").")
    scaled = sorted({r["decode_images"] for r in report["results"] if r.get("decode_images")})
    if scaled:
        notes.append(f"Decode timed on {', '.join(map(str, scaled))} image(s) per run where the "
                     "batch is larger, and scaled to the batch.")
    if report.get("reference"):
        notes.append("The reference runs the same weights and sampling plan in PyTorch; the "
                     "comparison is of the sampling loop (decode excluded), and torch/MLX above 1 "
                     "means MLX is faster.")
    return notes


def rich_tables(report: dict) -> list[Table]:
    table = Table(title="mlx-imgen profile", caption="\n".join(_footnotes(report)),
                  caption_justify="left")
    for name in COLUMNS:
        table.add_column(name, justify="left" if name in ("paradigm", "model") else "right")
    for r in report["results"]:
        table.add_row(*_row(r))
    tables = [table]
    decode = _decode_rows(report)
    if decode:
        table = Table(title="Next-token decode", caption=_decode_note(report),
                      caption_justify="left")
        for name in DECODE_COLUMNS:
            table.add_column(name, justify="left" if name == "model" else "right")
        for row in decode:
            table.add_row(*row)
        tables.append(table)
    rows = _reference_rows(report)
    if rows:
        ref = Table(title="MLX against the PyTorch reference")
        for name in REFERENCE_COLUMNS:
            ref.add_column(name)
        for row in rows:
            ref.add_row(*row)
        tables.append(ref)
    lines = finding_lines(report)
    if lines:
        findings = Table(title="Findings", show_header=False)
        findings.add_column("finding")
        for line in lines:
            findings.add_row(line)
        tables.append(findings)
    return tables


def _markdown_table(columns: list[str], rows: list[list[str]]) -> list[str]:
    return (["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
            + ["| " + " | ".join(row) + " |" for row in rows])


def markdown(report: dict, title: str = "mlx-imgen profile") -> str:
    lines = [f"# {title}", "", f"Created {report['created']}.", ""]
    lines += _markdown_table(COLUMNS, [_row(r) for r in report["results"]])
    decode = _decode_rows(report)
    if decode:
        lines += ["", "## Next-token decode", ""] + _markdown_table(DECODE_COLUMNS, decode)
        lines += ["", _decode_note(report)]
    rows = _reference_rows(report)
    if rows:
        lines += ["", "## MLX against the PyTorch reference", ""]
        lines += _markdown_table(REFERENCE_COLUMNS, rows)
    findings = finding_lines(report)
    if findings:
        lines += ["", "## Findings", ""] + [f"- {line}" for line in findings]
    lines += ["", "## Notes", ""] + [f"- {note}" for note in _footnotes(report)]
    return "\n".join(lines) + "\n"
