"""The fuzz run's figures as text: failures by check and by family, the worst cost, the smallest failures.

The tables are Markdown, so that a run's output can go into docs/fuzz.md as it is.
"""

from __future__ import annotations

from collections import Counter, defaultdict

from .cases import FAMILIES, MUTATIONS
from .checks import CHECKS

ALL_CHECKS = tuple(CHECKS) + ("harness",)


def failing(results: list[dict], check: str) -> list[dict]:
    return [r for r in results if any(c == check for c, _ in r["failures"])]


def detail(result: dict, check: str) -> str:
    return next(d for c, d in result["failures"] if c == check)


def _table(header: list[str], rows: list[list]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return out


def summary(results: list[dict], *, seed: int, jobs: int, profile: str, elapsed: float, corpus: int) -> str:
    modes = Counter(r["mode"] for r in results)
    bad = [r for r in results if r["failures"]]
    lines = [f"{len(results)} cases (seed {seed}, profile {profile}): {modes.get('process', 0)} as processes of"
             f" their own, {modes.get('fork', 0)} forked from a worker; {jobs} jobs; {elapsed:.0f} s;"
             f" {corpus} messages from CPython's email test corpus.",
             f"{len(bad)} cases failed at least one check; {sum(r['posted'] for r in results)} were posted to"
             " the members.", ""]
    lines.append("Failures by check (a case may fail several):")
    lines.append("")
    lines += _table(["check", "cases", "what it checks"],
                    [[c, len(failing(results, c)), CHECKS.get(c, "the harness itself ran")] for c in ALL_CHECKS
                     if c in CHECKS or failing(results, c)])
    lines.append("")
    used = [c for c in ALL_CHECKS if failing(results, c)]
    by_family: dict[str, Counter] = defaultdict(Counter)
    for r in results:
        for c in {c for c, _ in r["failures"]}:
            by_family[r["family"]][c] += 1
    sizes = Counter(r["family"] for r in results)
    lines.append("Failures by family (cases failing each check):")
    lines.append("")
    lines += _table(["family", "cases", "failing", *used],
                    [[f, sizes[f], sum(1 for r in results if r["family"] == f and r["failures"]),
                      *(by_family[f][c] or "" for c in used)] for f in list(FAMILIES) if sizes[f]])
    lines.append("")
    mut = Counter(m for r in results for m in r["mutations"])
    mut_bad = Counter(m for r in bad for m in r["mutations"])
    variants = Counter(r["variant"] for r in results)
    variants_bad = Counter(r["variant"] for r in bad)
    lines.append("Mutations and variants (cases with it, of them failing):")
    lines.append("")
    lines += _table(["mutation or variant", "cases", "failing"],
                    [[m, mut[m], mut_bad[m]] for m in MUTATIONS if mut[m]] +
                    [[f"variant {v}", variants[v], variants_bad[v]] for v in sorted(variants)])
    lines.append("")
    lines.append("Cost per case (CPU: the case's process and its sendmail; RSS: its own peak; extra: above"
                 " the worker or an idle listfilter-deliver):")
    lines.append("")
    rows = []
    for mode in ("fork", "process"):
        rs = [r for r in results if r["mode"] == mode]
        if not rs:
            continue
        for what, key, unit in (("CPU", "cpu", "s"), ("wall", "wall", "s"), ("peak RSS", "rss", "MB"),
                                ("extra RSS", "extra_rss", "MB")):
            worst = max(rs, key=lambda r: r[key])
            rows.append([mode, f"worst {what}", f"{worst[key]:.2f} {unit}" if unit == "s" else f"{worst[key]:.0f} {unit}",
                         worst["id"], f"{worst['size']} bytes", worst["name"][:70]])
    lines += _table(["mode", "figure", "value", "case", "size", "case name"], rows)
    lines.append("")
    if bad:
        lines.append("The smallest failing case of each check and family"
                     " (`python -m bench.fuzz --seed N --case INDEX` reruns one):")
        lines.append("")
        rows = []
        for c in used:
            for f in FAMILIES:
                fs = [r for r in failing(results, c) if r["family"] == f]
                if fs:
                    r = min(fs, key=lambda r: (r["size"], r["index"]))
                    rows.append([c, f, r["id"], r["size"], r["name"][:60], detail(r, c)[:110].replace("|", "\\|")])
        lines += _table(["check", "family", "case", "bytes", "case name", "what went wrong"], rows)
    return "\n".join(lines) + "\n"


def explain(check: str, results: list[dict], limit: int = 8) -> str:
    """For a failed assertion: how many cases failed ``check``, by family, and the smallest few."""
    fs = failing(results, check)
    fams = Counter(r["family"] for r in fs)
    out = [f"{len(fs)} cases fail {check!r} ({CHECKS.get(check, '')}); by family: "
           + ", ".join(f"{f} {n}" for f, n in fams.most_common())]
    seen = set()
    for r in sorted(fs, key=lambda r: (r["size"], r["index"])):
        if r["family"] in seen and len(seen) < len(fams):
            continue
        seen.add(r["family"])
        out.append(f"  {r['id']} [{r['family']}, {r['size']} bytes, {r['mode']}] {r['name'][:80]}: {detail(r, check)[:300]}")
        if len(out) > limit:
            break
    out.append("rerun one: python -m bench.fuzz --seed SEED --case INDEX (the case id is SEED-INDEX)")
    return "\n".join(out)
