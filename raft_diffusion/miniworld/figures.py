"""Render the build's ``figures.json`` as ``FIGURES.md`` with the issue's targets beside each figure."""

from __future__ import annotations

from pathlib import Path


def _row(name: str, value, target: str, ok: bool | None) -> str:
    mark = "" if ok is None else (" yes" if ok else " **no**")
    return f"| {name} | {value} | {target} |{mark} |"


def _pair(d: dict, what: str) -> str:
    """"independent / CLIP" reading of ``what`` ("shape" or "colour") in a generation or round-trip entry."""
    return f"{d.get(f'{what}_acc')} / {d.get(f'clip_{what}_acc', 'n/a')}"


def checks(f: dict) -> list[tuple[str, object, str, bool | None]]:
    """(figure, value, target, met) for every figure the issue asks for."""
    rows: list[tuple[str, object, str, bool | None]] = []
    zs = f.get("clip_zero_shot", {})
    rows.append(("CLIP zero-shot shape accuracy (held-out renders)", zs.get("shape_acc"), ">= 0.95", (zs.get("shape_acc") or 0) >= 0.95))
    rows.append(("CLIP zero-shot colour accuracy (held-out renders)", zs.get("colour_acc"), ">= 0.95", (zs.get("colour_acc") or 0) >= 0.95))
    rows.append(("CLIP zero-shot shape / colour, out-of-domain renders", f"{zs.get('ood_shape_acc')} / {zs.get('ood_colour_acc')}", "(reported)", None))
    rows.append(("VAE reconstruction PSNR, dB (held-out renders)", f.get("vae_psnr_db"), ">= 28", (f.get("vae_psnr_db") or 0) >= 28))
    a = f.get("aesthetic", {})
    rows.append(("Aesthetic head Spearman vs rating (held-out renders)", a.get("spearman"), ">= 0.9", (a.get("spearman") or 0) >= 0.9))
    ev = f.get("evaluator", {})
    if ev:
        nat_ = f.get("generation_settings", {}).get("native_resolution")
        for key in sorted(k for k in ev if k.startswith(("shape_acc@", "ood_shape_acc@"))):
            res = key.split("@")[1]
            ood = "out-of-domain" if key.startswith("ood_") else "in-domain"
            col = ev.get(key.replace("shape", "colour"))
            ok = min(ev[key], col or 0) >= (0.95 if res == str(nat_) else 0.9)
            rows.append((f"Independent evaluator shape / colour, held-out {ood} renders @{res}", f"{ev[key]} / {col}",
                         ">= 0.95 (32 px), 0.9 (16 px)", ok))
        for key in sorted(k for k in ev if k.startswith("rating_spearman@")):
            rows.append((f"Gold rating read by the evaluator, Spearman vs the rule @{key.split('@')[1]}", ev[key],
                         ">= 0.9", ev[key] >= 0.9))
    g = f.get("generation", {})
    st = f.get("generation_settings", {})
    nat, ada = st.get("native_resolution"), st.get("adaptation_resolution")
    n = g.get(f"in_domain@{nat}", {})
    d = g.get(f"in_domain@{ada}", {})
    both = " (independent evaluator / miniworld CLIP)"
    if n:
        rows.append((f"Generated, in-domain @{nat}: prompted shape named right{both}", _pair(n, "shape"), ">= 0.70",
                     n["shape_acc"] >= 0.70))
        rows.append((f"Generated, in-domain @{nat}: prompted colour named right{both}", _pair(n, "colour"), ">= 0.60",
                     n["colour_acc"] >= 0.60))
    if n and d:
        ds = round(n["shape_acc"] - d["shape_acc"], 4)
        dc = round(n["colour_acc"] - d["colour_acc"], 4)
        rows.append((f"Generated, in-domain @{ada}: shape{both}", _pair(d, "shape"), "(reported)", None))
        rows.append((f"Generated, in-domain @{ada}: colour{both}", _pair(d, "colour"), "(reported)", None))
        rows.append((f"Drop {nat} -> {ada}, shape (points, independent evaluator)", round(100 * ds, 1), ">= 15", ds >= 0.15))
        rows.append((f"Drop {nat} -> {ada}, colour (points, independent evaluator)", round(100 * dc, 1), ">= 15", dc >= 0.15))
    for res, c in f.get("vae_round_trip", {}).items():
        rows.append((f"VAE round trip @{res}: held-out renders encoded and decoded, shape{both}", _pair(c, "shape"),
                     "(reported)", None))
        rows.append((f"VAE round trip @{res}: colour{both}", _pair(c, "colour"), "(reported)", None))
    for res in (nat, ada):
        o = g.get(f"out_of_domain@{res}", {})
        if o:
            rows.append((f"Generated, out-of-domain @{res}: shape{both}", _pair(o, "shape"), "(reported)", None))
            rows.append((f"Generated, out-of-domain @{res}: colour{both}", _pair(o, "colour"), "(reported)", None))
    return rows


def write_markdown(out: str | Path, figures: dict) -> Path:
    out = Path(out)
    f = figures.get("figures", {})
    lines = ["# Miniworld figures", "",
             f"Written by `raft-diffusion miniworld build` (seed {figures.get('seed')}, quick={figures.get('quick')}). "
             "Held-out sets are fixed (`world.HELDOUT_SEED`); generation uses "
             f"{f.get('generation_settings', {})}.", "",
             "| figure | value | target | met |", "|---|---|---|---|"]
    lines += [_row(*r) for r in checks(f)]
    lines += ["", "## Wall times (CPU)", "", "| model | steps | wall s |", "|---|---|---|"]
    for name, r in figures.get("train", {}).items():
        lines.append(f"| {name} | {r.get('steps')} | {r.get('wall_s')} |")
    lines += ["", f"Training {figures.get('train_wall_s')} s, total with evaluation {figures.get('total_wall_s')} s, "
              f"torch threads {figures.get('torch_threads')}.", ""]
    if figures.get("notes"):
        lines += ["## Notes", "", *figures["notes"], ""]
    path = out / "FIGURES.md"
    path.write_text("\n".join(lines))
    return path
