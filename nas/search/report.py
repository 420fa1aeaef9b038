"""What a search tells its user: the budget preview (``--dry-run``), ``report.md`` and the Pareto front.

Plain functions of the records the pipeline writes (budget check, summary): nothing here runs a
search step, so ``nas.search.pipeline`` and the commands both import it.
"""

from __future__ import annotations

from typing import Any

from nas.arch import Arch


def objective_label(task: str) -> str:
    """How the search's objective is named for ``task``: accuracy, mIoU."""
    from nas.train.tasks import task_of

    return task_of(task).metric_label


def binds_in_text(info: dict) -> str:
    """One clause naming the shipped presets / spaces where a budget that does not bind would."""
    places = []
    for p in info.get("binds_in", []):
        where = f"preset {' / '.join(p['presets'])} (space {p['space']}, " if p["presets"] else f"space {p['space']} ("
        places.append(f"{where}{p['cost_range'][0]:.4g} ... {p['cost_range'][1]:.4g} {info['unit']})")
    if not places:
        return f"it binds in no shipped space for {info['op']}"
    return f"it binds for {info['op']} in: " + "; ".join(places)


def preview_text(info: dict) -> str:
    """The human-readable budget preview of ``shiftaddaug-search --dry-run``."""
    lo, hi = info["cost_range"]
    unit, b = info["unit"], info["budget"]
    budget = f"{b['value']:g} {unit}"
    classes = f"{info['num_classes']} classes" + (" (the space's: a folder's count is known once it is read)"
                                                   if info["num_classes_from"] == "space" else "")
    lines = [
        f"budget {budget} ({info['metric']}), {info['op']} TargetNet, preset {info['preset']}, dataset {info['dataset']}",
        f"space {info['space']} at {info['resolution']}x{info['resolution']}, {classes}, priced on {info['hardware']} at {info['bits']} bit",
        f"cost range of the space: {lo:.4g} ... {hi:.4g} {unit} (cheapest ... dearest {info['op']} network)",
    ]
    if info["binds"]:
        lines.append(f"the budget binds: it lies inside the range ({100 * (b['value'] - lo) / (hi - lo):.0f}% of the way up)")
    elif not info["feasible"]:
        lines.append(f"the budget cannot be met: the smallest feasible budget is {lo:.4g} {unit}; {binds_in_text(info)}")
    else:
        lines.append(f"the budget does not bind: every network of the space costs less; {binds_in_text(info)}")
    return "\n".join(lines)


def pareto_front(points: list[list[float]]) -> list[tuple[float, float]]:
    """Non-dominated (cost low, accuracy high) points, sorted by cost."""
    front, best = [], float("-inf")
    for c, a in sorted(points, key=lambda p: (p[0], -p[1])):
        if a > best:
            front.append((c, a))
            best = a
    return front


def search_report(run: Any, s: dict, b: dict, target: Arch) -> str:
    """``report.md`` of a finished search ``run`` (a ``SearchRun``): its summary ``s``, budget check ``b``."""
    unit = b["unit"]
    lines = [
        f"# shiftaddaug-search: {run.out.name}",
        "",
        f"Budget **{s['budget']}** ({b['metric']}), operator **{s['op']}**, space `{run.space.name}`, dataset `{run.cfg.dataset}`, preset `{run.cfg.preset}`.",
        "",
    ]
    lo, hi = b["cost_range"]
    if not b["binds"]:
        lines += [f"> The budget does not bind: the largest {s['op']} network of the space costs {hi:.4g} {unit}; "
                  f"{binds_in_text(b)}.", ""]
    obj, label = s["objective"], objective_label(run.cfg.task)
    lines += [
        "| | value |",
        "|---|---|",
        f"| TargetNet {b['metric']} | {s['energy_mJ']:.4g} mJ, {s['latency_ms']:.4g} ms ({'meets' if s['meets_budget'] else 'misses'} the budget) |",
        f"| MACs / params | {s['macs'] / 1e6:.3f} M / {s['params'] / 1e6:.4f} M |",
        f"| {label} (test / val) | {s[obj]['test']:.2f}% / {s[obj]['val']:.2f}% |",
        *([f"| pixel accuracy (test / val) | {s['pixel_acc']['test']:.2f}% / {s['pixel_acc']['val']:.2f}% |"] if "pixel_acc" in s else []),
        f"| supernet estimate before training | {s[obj]['supernet_estimate']:.2f}% |",
        f"| SubNet (stage one) | multiple {s['subnet']['multiple']}, cost {s['subnet']['cost']:.4g} {unit}, supernet {label} {s['subnet'][f'supernet_{obj}']:.2f}% |",
        f"| space cost range | {lo:.4g} ... {hi:.4g} {unit} |",
        f"| wall time | {s['time_s']:.0f} s |",
        "",
        "## TargetNet",
        "",
        "```",
        target.summary(),
        "```",
        "",
        "![stage two](pareto.png)",
        "",
        "Files: `target/` (arch.json, weights.pt, cost.json, meta.json), `population.csv` (stage one), "
        "`trials.csv` (stage two), `train/metrics.csv`, `supernet.pt`.",
        "",
    ]
    return "\n".join(lines)
