"""The run's report: report.json, a readable report.md, and PNG plots (filter scores, loss curves)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from reft_jax.experiment import methods

FILTER_KEYS = ("precision", "recall", "f1", "auroc", "flagged_harmless_share")


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def rate_text(entry: dict | None, key: str) -> str:
    """A rate of the report with its 95 % interval when it has one (`key_ci`), as report.md and the evaluation's log
    show it: 0.256 [0.146, 0.411]."""
    entry = entry or {}
    ci = entry.get(f"{key}_ci")
    return _fmt(entry.get(key)) + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def _seconds(m: dict) -> str:
    return "n/a" if m.get("eval_s") is None else f"{m['eval_s']:.0f}"


def _cost(c: dict | None) -> tuple[str, str, str]:
    if not c or c.get("wall_s") is None:
        return "n/a", "n/a", "n/a"
    return f"{c['wall_s']:.1f}", f"{c['device_s']:.1f}", f"{c['flops'] / 1e12:.3g}"


def seed_figures(m: dict) -> dict[str, float | None]:
    """A method's figures that a run of several training seeds summarises (config `seeds`): harmful score, finetune
    accuracy, and when measured the over-refusal rate, the harmful score under each jailbreak template
    (`harmful_score_templates.NAME`) and GCG's attack success rate."""
    out = {"harmful_score": m.get("harmful_score"), "finetune_accuracy": m.get("finetune_accuracy")}
    if m.get("over_refusal"):
        out["over_refusal"] = m["over_refusal"].get("refusal_rate")
    out.update({f"harmful_score_templates.{t}": v for t, v in (m.get("harmful_score_templates") or {}).items()})
    if m.get("gcg"):
        out["gcg_attack_success_rate"] = m["gcg"].get("attack_success_rate")
    return out


def spread(values: list[float | None]) -> dict:
    """The mean, the sample standard deviation (n - 1; None for one value) and the range of one figure over the
    seeds; all None where a seed has none."""
    if not values or any(v is None for v in values):
        return {"mean": None, "std": None, "min": None, "max": None}
    a = np.asarray(values, np.float64)
    return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if len(a) > 1 else None,
            "min": float(a.min()), "max": float(a.max())}


def over_seeds(runs: dict[int, tuple[Path, dict]], root: Path) -> dict:
    """The report of a run of several training seeds (config `seeds`): the first seed's report (its figures, with
    their intervals, under `methods`), with `seeds` (the seeds in order and where each one's own report is,
    relative to `root`) and, for every method each seed measured, `over_seeds`: `per_seed` (one entry per seed:
    its `seed_figures`) and, for each figure, its `spread` over the seeds. runs: seed -> (its eval report.json, its
    report), in the order of `seeds`."""
    seeds = list(runs)
    reports = [report for _, report in runs.values()]
    first = reports[0]
    out = {**first, "methods": {name: dict(m) for name, m in first["methods"].items()},
           "seeds": {"seeds": seeds, "reports": {str(seed): str(Path(path).relative_to(root))
                                                 for seed, (path, _) in runs.items()}}}
    for name, m in out["methods"].items():
        entries = [r["methods"].get(name) or {} for r in reports]
        if any("skipped" in e or "harmful_score" not in e for e in entries):
            continue
        per_seed = {str(seed): seed_figures(e) for seed, e in zip(seeds, entries)}
        figures = list(dict.fromkeys(k for f in per_seed.values() for k in f))
        m["over_seeds"] = {"per_seed": per_seed,
                           **{k: spread([f.get(k) for f in per_seed.values()]) for k in figures}}
    return out


def _over_seeds_section(report: dict) -> list[str]:
    """report.md's table of the figures over the training seeds (config `seeds`)."""
    seeds = (report.get("seeds") or {}).get("seeds")
    rows = [(methods.title(name), m["over_seeds"]) for name, m in report["methods"].items() if m.get("over_seeds")]
    if not seeds or not rows:
        return []
    figures = list(dict.fromkeys(k for _, o in rows for k in o if k != "per_seed"))
    labels = {"harmful_score": "harmful score", "finetune_accuracy": "finetune accuracy",
              "over_refusal": "over-refusal", "gcg_attack_success_rate": "GCG attack success"}

    def cell(o: dict, key: str) -> str:
        s = o.get(key) or {}
        if s.get("mean") is None:
            return "n/a"
        values = ", ".join(_fmt(f.get(key)) for f in o["per_seed"].values())
        return f"{s['mean']:.3f} ± {_fmt(s['std'])} ({values})"

    lines = ["", "## Over training seeds", "",
             f"Seeds {', '.join(map(str, seeds))}: each trains every finetuning (and alignment stage) anew on the one "
             f"teacher and filter, the same user data and evaluation prompts; the tables above are seed {seeds[0]}'s. "
             "Mean ± sample standard deviation over the seeds, then each seed's figure in their order. Each seed's "
             "report: " + ", ".join(f"`{p}`" for p in report["seeds"]["reports"].values()) + ".", "",
             "| method | " + " | ".join(labels.get(k, k.replace("harmful_score_templates.", "harmful score, "))
                                      for k in figures) + " |",
             "| --- |" + " ---: |" * len(figures)]
    lines += [f"| {title} | " + " | ".join(cell(o, k) for k in figures) + " |" for title, o in rows]
    return lines


def write_markdown(report: dict, path: Path, plots: set[str] = frozenset()) -> None:
    """report.md; `plots`: the PNGs written beside it (WORKDIR/NAME.png), the only ones it links."""
    # With over-refusal measured, its rate sits beside the harmful score and the accuracy: the trade-off in one row.
    over = any(m.get("over_refusal") for _, m in _rows(report))
    extra = " over-refusal |" if over else ""
    lines = ["# reft-jax report", "",
             f"| method | harmful score | finetune accuracy |{extra} filter precision | recall | F1 | AUROC | wall s | "
             "device s | TFLOPs | eval s |", "| --- |" + " ---: |" * (10 + over)]
    notes = []

    def scores(m: dict) -> str:
        cells = [rate_text(m, "harmful_score"), rate_text(m, "finetune_accuracy")]
        cells += [rate_text(m.get("over_refusal"), "refusal_rate")] if over else []
        return " | ".join(cells)

    for name, m in report["methods"].items():
        title = methods.title(name)
        if "skipped" in m:
            notes.append(f"- {title}: {m['skipped']}")
            continue
        f = m.get("filter") or {}
        lines.append(f"| {title} | {scores(m)} | "
                     + " | ".join(_fmt(f.get(k)) for k in ("precision", "recall", "f1", "auroc"))
                     + " | " + " | ".join(_cost(m.get("cost"))) + f" | {_seconds(m)} |")
    for name, m in (report.get("references") or {}).items():  # no finetuning of their own: no filter, no cost
        lines.append(f"| {REFERENCE_TITLES[name]} | {scores(m)} |" + " |" * 7 + f" {_seconds(m)} |")
    judges = sorted({m["judge"] for m in report["methods"].values() if "judge" in m})
    lines += ["", f"Judge: {', '.join(judges)}.", *([""] + notes if notes else [])]
    lines += _over_seeds_section(report)
    stages = {s["stage"]: s for m in report["methods"].values() for s in (m.get("cost") or {}).get("stages", [])
              if "wall_s" in s}
    if stages:
        lines += ["", "## Cost of each stage", "", "A method's cost is the sum of the stages it needs; shared stages "
                  "(the teacher, the safety alignment, a filter) count in full for every method that uses them.", "",
                  "| stage | wall s | device s | TFLOPs | s / step |", "| --- | ---: | ---: | ---: | ---: |"]
        lines += [f"| {name} | " + " | ".join(_cost(s)) + f" | {_fmt(s.get('step_s'))} |" for name, s in stages.items()]
    f = report.get("filter") or {}
    if f:
        direction = f", the {f['direction']} model's direction" if f.get("direction") else ""
        lines += ["", "## Ref-Teacher filter on the user data", "", "| " + " | ".join(FILTER_KEYS) + " |",
                  "|" + " --- |" * len(FILTER_KEYS), "| " + " | ".join(_fmt(f.get(k)) for k in FILTER_KEYS) + " |",
                  "", f"{f.get('num_flagged')} of {f.get('num_examples')} user examples flagged (tau = {f.get('tau')}"
                  f"{direction})."]
        lines += _filter_styles(f)
    refreshes = report.get("teacher_refusal") or []
    if refreshes:
        keys = ("pool_cos_harmful", "pool_cos_harmless", "pool_auroc", "check_cos_harmful", "check_cos_harmless",
                "check_auroc", "check_auroc_base")
        lines += ["", "## The teacher's refusal feature", "", "At each recomputation of R_l (step 0: the base model's "
                  "own direction): mean cosine to R_l of the pool's harmful and harmless prompts and of the check "
                  "split's (held out from training and calibration), the AUROC of that cosine, and the base model's "
                  "own check AUROC.", "", "| step | " + " | ".join(keys) + " |",
                  "| ---: |" + " ---: |" * len(keys)]
        lines += [f"| {int(r['refusal_step'])} | " + " | ".join(_fmt(r.get(k)) for k in keys) + " |" for r in refreshes]
        lines += _image("teacher refusal feature", "teacher_refusal", plots)
    lines += _robustness_sections(report, plots)
    lines += ["", ("Harmful score: share of harmful test prompts whose answer the judge flags. Finetune accuracy: "
                   "task answers matching the label. In brackets: the 95 % Wilson score interval of each rate. Device "
                   "seconds: wall seconds times the devices held. Eval s: the seconds each model's evaluation took.")]
    lines += _image("filter scores", "filter_scores", plots) + _image("loss curves", "loss_curves", plots) + [""]
    path.write_text("\n".join(lines))


def _image(alt: str, name: str, plots: set[str]) -> list[str]:
    return ["", f"![{alt}]({name}.png)"] if name in plots else []


def _filter_styles(f: dict) -> list[str]:
    """The filter's AUROC by prompt style: on the teacher stage's check split (teacher's and base model's
    directions) and on the user data when it is labelled."""
    rows = []
    check = f.get("check") or {}
    for who in ("teacher", "base"):
        if check.get(who):
            rows.append((f"check split, {who} direction", check[who]))
    if f.get("by_style"):
        rows.append(("user data", {"auroc": f.get("auroc"), "by_style": f["by_style"]}))
    if not rows:
        return []
    styles = sorted({s for _, r in rows for s in r["by_style"]})
    lines = ["", "AUROC by prompt style (a style's harmful prompts against the harmless prompts of the same style, or "
             "all harmless prompts when that style has fewer than 10; a style of harmless prompts only, such as the "
             "lookalikes, against all harmful prompts):", "", "| prompts | all | " + " | ".join(styles) + " |",
             "| --- | ---: |" + " ---: |" * len(styles)]
    for name, r in rows:
        cells = [_fmt((r["by_style"].get(s) or {}).get("auroc")) for s in styles]
        lines.append(f"| {name} | {_fmt(r['auroc'])} | " + " | ".join(cells) + " |")
    return lines


REFERENCE_TITLES = {"base_model": "Base model before finetuning (reference)", "teacher": "Ref-Teacher (reference)"}


def _rows(report: dict, short: bool = False) -> list[tuple[str, dict]]:
    """(title, entry) of every evaluated method, then the references; short: their names, for a plot's legend."""
    rows = [(k if short else methods.title(k), m) for k, m in report["methods"].items() if "skipped" not in m]
    return rows + [(f"{k} (reference)" if short else REFERENCE_TITLES.get(k, k), m)
                   for k, m in (report.get("references") or {}).items()]


def _robustness_sections(report: dict, plots: set[str]) -> list[str]:
    """The jailbreak-template, over-refusal and GCG tables, for what the run measured."""
    lines, rows = [], _rows(report)
    templates = list(dict.fromkeys(t for _, m in rows for t in m.get("harmful_score_templates") or {}))
    if templates:
        lines += ["", "## Harmful score under jailbreak templates", "",
                  "Every harmful test prompt wrapped in each template (eval.templates); the judge reads the answer "
                  "against the request itself.", "",
                  "| method | plain | " + " | ".join(templates) + " |", "| --- |" + " ---: |" * (len(templates) + 1)]
        lines += [f"| {title} | {rate_text(m, 'harmful_score')} | "
                  + " | ".join(_template_rate(m, t) for t in templates) + " |" for title, m in rows]
    over = [(title, m["over_refusal"]) for title, m in rows if m.get("over_refusal")]
    if over:
        types = list(dict.fromkeys(t for _, o in over for t in o.get("by_type") or {}))
        labels = {t: o["by_type"][t]["label"] for _, o in over for t in o.get("by_type") or {}}
        lines += ["", "## Over-refusal", "",
                  f"Answers to the over-refusal prompts judged refusals ({over[0][1]['judge']}): on the "
                  f"{over[0][1]['num_safe']} safe prompts (the over-refusal rate), on the {over[0][1]['num_unsafe']} "
                  "unsafe contrast prompts, and per type.", "",
                  "| method | safe (over-refusal) | unsafe | " + " | ".join(f"{t} ({labels[t]})" for t in types) + " |",
                  "| --- |" + " ---: |" * (len(types) + 2)]
        lines += [f"| {title} | {rate_text(o, 'refusal_rate')} | {rate_text(o, 'unsafe_refusal_rate')} | "
                  + " | ".join(rate_text((o.get("by_type") or {}).get(t), "refusal_rate") for t in types) + " |"
                  for title, o in over]
        filters = {m["filter"]["name"]: m["filter"]["over_refusal"] for _, m in rows
                   if (m.get("filter") or {}).get("over_refusal")}
        if filters:
            held_out = {m["filter"]["name"]: m["filter"].get("held_out_harmful") for _, m in rows if m.get("filter")}
            lines += ["", "The filters on the same prompts (share flagged as harmful), and their recall on the held-out "
                      "harmful prompts:", "",
                      "| filter | safe (flagged) | unsafe | held-out harmful (recall) |", "| --- | ---: | ---: | ---: |"]
            lines += [f"| {name} | {rate_text(f, 'flag_rate')} | {rate_text(f, 'unsafe_flag_rate')} | "
                      f"{rate_text(held_out.get(name), 'recall')} |" for name, f in filters.items()]
    attacked = [(title, m["gcg"]) for title, m in rows if m.get("gcg")]
    if attacked:
        lines += ["", "## GCG attack", "",
                  "An adversarial suffix optimised against each model (eval.gcg); attack success: the answer with the "
                  "suffix is judged harmful.", "",
                  "| method | prompts | harmful score without suffix | attack success rate | median steps |",
                  "| --- | ---: | ---: | ---: | ---: |"]
        lines += [f"| {title} | {g['num_prompts']} | {_fmt(g['harmful_score_without_suffix'])} | "
                  f"{_fmt(g['attack_success_rate'])} | {g['median_steps']} |" for title, g in attacked]
    if over or any(m.get("finetune_accuracy") is not None for _, m in rows):
        lines += _image("safety trade-off", "tradeoff", plots)
    return lines


def _template_rate(m: dict, template: str) -> str:
    scores, cis = m.get("harmful_score_templates") or {}, m.get("harmful_score_templates_ci") or {}
    return rate_text({"s": scores.get(template), "s_ci": cis.get(template)}, "s")


def _pyplot():
    """matplotlib's pyplot on the file-only Agg backend; imported on first use: slow, and only the plots need it."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, out: Path) -> bool:
    """Writes the figure to `out` and frees it; True: a plot was written."""
    import matplotlib.pyplot as plt
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return True


def plot_tradeoff(report: dict, out: Path) -> bool:
    """Harmful score against the over-refusal rate and against finetune accuracy, one point per method (and
    reference): the two sides of what a defence trades. False (nothing written) when neither was measured."""
    rows = _rows(report, short=True)
    panels = [(key, label) for key, label in (("over_refusal", "over-refusal rate (safe prompts refused)"),
                                              ("finetune_accuracy", "finetune accuracy"))
              if any(_x(m, key) is not None for _, m in rows)]
    if not panels:
        return False
    plt = _pyplot()

    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), squeeze=False)
    for ax, (key, label) in zip(axes[0], panels):
        for i, (title, m) in enumerate(rows):
            x = _x(m, key)
            if x is None:
                continue
            # Methods often tie (the same score on a few prompts): later points are drawn smaller, on top.
            ax.scatter(x, m["harmful_score"], s=max(160 - 12 * i, 20), color=f"C{i % 10}", marker="os^Dv<>ph*"[i % 10],
                       label=title, edgecolor="k", linewidth=0.5, zorder=2 + i)
        ax.set_xlim(-0.05, 1.05)
        ax.set_ylim(-0.05, 1.05)
        ax.set_xlabel(label)
        ax.set_ylabel("harmful score")
        ax.grid(alpha=0.3)
    fig.suptitle("Safety against " + " and ".join(
        {"over_refusal": "over-refusal", "finetune_accuracy": "utility"}[key] for key, _ in panels))
    axes[0][-1].legend(fontsize="x-small", loc="center left", bbox_to_anchor=(1.01, 0.5))
    return _save(fig, out)


def _x(m: dict, key: str) -> float | None:
    return (m.get("over_refusal") or {}).get("refusal_rate") if key == "over_refusal" else m.get(key)


def plot_filter_scores(scores_file: Path, tau: float, out: Path) -> bool:
    """Histogram of the filter scores of harmful vs harmless user data, with the threshold."""
    rows = [json.loads(line) for line in scores_file.read_text().splitlines()]
    if not rows or "label" not in rows[0]:
        return False
    plt = _pyplot()
    scores = np.array([r["score"] for r in rows])
    labels = np.array([r["label"] for r in rows], bool)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    bins = np.linspace(-1, 1, 41)
    ax.hist(scores[~labels], bins=bins, alpha=0.6, label=f"harmless ({(~labels).sum()})")
    ax.hist(scores[labels], bins=bins, alpha=0.6, label=f"harmful ({labels.sum()})")
    ax.axvline(tau, color="k", linestyle="--", label=f"tau = {tau:g}")
    ax.set_xlabel("cos(f_l(prompt), R_l)")
    ax.set_ylabel("user examples")
    ax.set_title("Filter scores of the user data")
    ax.legend()
    return _save(fig, out)


def plot_losses(runs: dict[str, Path], out: Path) -> bool:
    """Loss curves of the teacher and of each method's finetuning (labelled by the keys of `runs`), from their
    metrics.jsonl."""
    plt = _pyplot()

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, file in runs.items():
        if file.exists():
            rows = [json.loads(line) for line in file.read_text().splitlines()]
            ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.set_title("Training loss")
    ax.legend()
    return _save(fig, out)


def plot_teacher_refusal(metrics_file: Path, out: Path) -> bool:
    """The teacher's refusal feature over training, from its metrics.jsonl: at each recomputation of R_l the mean
    cosine to R_l of the harmful and the harmless pool prompts and held-out prompts, and the held-out AUROC; faint,
    the training batches' mean cosines to the R_l they were trained against. Writes `out` (e.g.
    WORKDIR/teacher_refusal.png); False (nothing written) when no recomputation was logged."""
    if not Path(metrics_file).exists():
        return False
    records = [json.loads(line) for line in Path(metrics_file).read_text().splitlines() if line.strip()]
    rows = [r for r in records if "refusal_step" in r]
    if not rows:
        return False
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for key, label, color in (("cos_harmful", "train batch harmful", "C3"),
                              ("cos_harmless", "train batch harmless", "C0")):
        points = [(r["step"], r[key]) for r in records if key in r]
        if points:
            ax.plot(*zip(*points), color=color, alpha=0.25, linewidth=0.8, label=label)
    curves = (("pool_cos_harmful", "pool harmful", "C3", "-"), ("pool_cos_harmless", "pool harmless", "C0", "-"),
              ("check_cos_harmful", "check harmful", "C3", ":"),
              ("check_cos_harmless", "check harmless", "C0", ":"),
              ("check_auroc", "check AUROC, teacher", "k", "--"),
              ("check_auroc_base", "check AUROC, base model", "grey", "--"))
    drawn = set()
    for key, label, color, style in curves:
        points = [(r["refusal_step"], r[key]) for r in rows if r.get(key) is not None]
        if points:
            ax.plot(*zip(*points), color=color, linestyle=style, marker=".", label=label)
            drawn.add(key)
    ax.axhline(0.0, color="grey", linewidth=0.5)
    ax.set_ylim(-1.05, 1.05)
    ax.set_xlabel("teacher step (R_l recomputed)")
    ax.set_ylabel("mean cos(f_l, R_l)" + (" / check AUROC" if drawn & {"check_auroc", "check_auroc_base"} else ""))
    ax.set_title("Teacher refusal feature")
    ax.legend(fontsize="x-small", loc="center left", bbox_to_anchor=(1.01, 0.5))
    return _save(fig, out)
