#!/usr/bin/env python3
"""How cost grows: grpo's and TRL's step time and peak RSS as completions get longer and groups larger, one
factor at a time (issue #30, item 4).

    python bench/cost_growth.py MODEL_DIR --out DIR [--lengths 64,128,256] [--groups 4,8,16]
        [--base-length 64] [--base-G 8] [--sides trl,grpo] [--modes full] [--steps 4] [--repeats 1]
        [--reuse] [bench/side_by_side.py's other flags: the work's (bench/work.py), --num-prompts, ...]

bench/run_cost_growth.sh runs it on SmolLM2-135M-Instruct at the work of bench/run_real_bench.sh.

The settings: the completion length (the work's --max-new-tokens) over --lengths at G = --base-G, then G
over --groups at --base-length tokens; the point the two series share runs once and is a row of both.
Each setting is one bench/side_by_side.py invocation (`side_by_side.main`, each side in its own process)
into OUT/len{TOKENS}_G{G}/: its runs, their logs, side_by_side.json and table.txt. Its figures are
side_by_side's: s/step the median step after the first 2, completion tokens/s the tokens per step over
s/step, peak RSS the process's ru_maxrss; the ratios are each side's against TRL in the same setting and
mode. A side that fails is a result, "out of memory" or "failed (rc N)" (`side_by_side.failure`), shown
with the peak RSS it had reached when it stopped; the sweep goes on. --reuse keeps each setting whose
side_by_side.json is there, so an interrupted sweep resumes where it stopped.

Writes OUT/cost_growth.json (the rows), OUT/cost_growth.md (the table, printed last) and OUT/cost_growth.png
(s/step and peak RSS against the completion length and against G, a line per side, failures marked x).
"""

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import side_by_side  # noqa: E402

LENGTH, GROUP = "completion length", "G"
OWN_FLAGS = ("--G", "--max-new-tokens", "--max-steps", "--out", "--sides", "--modes", "--repeats")
"""side_by_side.py flags this script sets for every setting; given as pass-through they are an error."""


@dataclass(frozen=True)
class Setting:
    tokens: int
    """The cap on new tokens (the work's --max-new-tokens)."""
    G: int
    """Completions per prompt."""

    @property
    def name(self) -> str:
        return f"len{self.tokens}_G{self.G}"


def series(lengths: list[int], groups: list[int], base_length: int, base_G: int) -> list[tuple[str, int, Setting]]:
    """(factor, value, setting): the completion length at G = base_G, then G at base_length tokens.

    >>> [s.name for _, _, s in series([64, 128], [4, 8], base_length=64, base_G=8)]
    ['len64_G8', 'len128_G8', 'len64_G4', 'len64_G8']
    """
    return [(LENGTH, n, Setting(n, base_G)) for n in lengths] + [(GROUP, g, Setting(base_length, g)) for g in groups]


def settings(rows: list[tuple[str, int, Setting]]) -> list[Setting]:
    """Each setting once, in the order of the rows (the shared point where the length series has it)."""
    return list(dict.fromkeys(s for _, _, s in rows))


def side_by_side_argv(s: Setting, args: argparse.Namespace, passthrough: list[str]) -> list[str]:
    return [str(args.model_dir), *passthrough, "--out", str(args.out / s.name), "--max-new-tokens", str(s.tokens),
            "--G", str(s.G), "--max-steps", str(args.steps), "--sides", args.sides, "--modes", args.modes,
            "--repeats", str(args.repeats)]


def run_setting(s: Setting, args: argparse.Namespace, passthrough: list[str]) -> None:
    """One side_by_side invocation; it writes OUT/NAME/side_by_side.json."""
    side_by_side.main(side_by_side_argv(s, args, passthrough))


def sweep(todo: list[Setting], args: argparse.Namespace, passthrough: list[str]) -> dict[str, dict]:
    """Each setting's side_by_side.json, running the settings not done (every one without --reuse)."""
    results = {}
    for s in todo:
        done = args.out / s.name / "side_by_side.json"
        if args.reuse and done.exists():
            print(f"{s.name}: done, reusing {done}", flush=True)
        else:
            print(f"\n== {s.name}: up to {s.tokens} new tokens, G={s.G}", flush=True)
            done.unlink(missing_ok=True)  # a setting stopped part-way is not done
            run_setting(s, args, passthrough)
        results[s.name] = json.loads(done.read_text())
    return results


def cost_rows(rows: list[tuple[str, int, Setting]], results: dict[str, dict]) -> list[dict]:
    """A row per (factor, value, side) from the settings' side_by_side.json ("summary", "ratios")."""
    out = []
    for factor, value, s in rows:
        res = results[s.name]
        for side, sm in res["summary"].items():
            r = res["ratios"].get(side) or {}
            out.append({"factor": factor, "value": value, "tokens": s.tokens, "G": s.G, "side": side,
                        "status": sm.get("failed", "ok"), "sec_per_step": sm.get("sec_per_step"),
                        "completion_tok_per_s": sm.get("completion_tok_per_s"),
                        "peak_rss_gib": sm["peak_rss_mib"] / 1024, "vs": r.get("vs"),
                        "steps_per_s_ratio": r.get("steps_per_s"), "peak_rss_ratio": r.get("peak_rss")})
    return out


def format_markdown(rows: list[dict]) -> str:
    """The table: a failed side shows its failure for s/step and the peak RSS it had reached."""
    lines = ["| factor | value | side | s/step | completion tokens/s | peak RSS GiB | steps/s grpo/trl "
             "| peak RSS grpo/trl |", "|---|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        ok = r["status"] == "ok"
        factor = f"{LENGTH} (G={r['G']})" if r["factor"] == LENGTH else f"G ({r['tokens']} tokens)"
        ratio = lambda key: "" if r[key] is None else f"x{r[key]:.2f}"  # noqa: E731
        cells = [factor, str(r["value"]), r["side"], f"{r['sec_per_step']:.3g}" if ok else r["status"],
                 f"{r['completion_tok_per_s']:.1f}" if ok else "",
                 f"{r['peak_rss_gib']:.2f}" + ("" if ok else " when it stopped"),
                 ratio("steps_per_s_ratio"), ratio("peak_rss_ratio")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    """s/step (top) and peak RSS (bottom) against the completion length (left) and G (right), a line per
    side; a failed point is an x, at the RSS it had reached and at the top of the s/step panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sides = list(dict.fromkeys(r["side"] for r in rows))
    fig, axes = plt.subplots(2, 2, figsize=(11, 7), squeeze=False)
    for col, factor in enumerate((LENGTH, GROUP)):
        points = [r for r in rows if r["factor"] == factor]
        values = sorted({r["value"] for r in points})
        for row, (key, label) in enumerate((("sec_per_step", "s/step"), ("peak_rss_gib", "peak RSS GiB"))):
            ax = axes[row][col]
            for i, side in enumerate(sides):
                mine = [r for r in points if r["side"] == side]
                ok = [r for r in mine if r["status"] == "ok"]
                ax.plot([r["value"] for r in ok], [r[key] for r in ok], "o-", color=f"C{i}", label=side)
                for r in mine:
                    if r["status"] == "ok":
                        continue
                    y, where = (r[key], ax.transData) if key == "peak_rss_gib" else (0.95, ax.get_xaxis_transform())
                    ax.plot([r["value"]], [y], "x", color=f"C{i}", markersize=10, mew=2, transform=where)
                    ax.annotate("OOM" if r["status"] == "out of memory" else r["status"], (r["value"], y),
                                xycoords=where, textcoords="offset points", xytext=(6, -4), color=f"C{i}", fontsize=8)
            if values:
                ax.set_xscale("log", base=2)
                ax.set_xticks(values, [str(v) for v in values])
                ax.minorticks_off()
            ax.set(xlabel=factor, ylabel=label)
            ax.set_ylim(bottom=0)
            ax.grid(alpha=0.3)
        if points:
            at = f"G={points[0]['G']}" if factor == LENGTH else f"{points[0]['tokens']} tokens"
            axes[0][col].set_title(f"{factor} ({at})")
    axes[0][0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(rows: list[dict], out: Path) -> str:
    """OUT/cost_growth.json, .md and .png; the table."""
    table = format_markdown(rows)
    (out / "cost_growth.json").write_text(json.dumps({"rows": rows}, indent=1) + "\n")
    (out / "cost_growth.md").write_text(table + "\n")
    plot(rows, out / "cost_growth.png")
    return table


def parse_args(argv=None) -> tuple[argparse.Namespace, list[str]]:
    """This script's flags, and the rest, passed on to side_by_side.py."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    ints = lambda text: [int(x) for x in text.split(",")]  # noqa: E731
    p.add_argument("model_dir", type=Path, help="a local Hugging Face model directory")
    p.add_argument("--out", type=Path, required=True, help="where the settings' runs and the report go")
    p.add_argument("--lengths", type=ints, default=[64, 128, 256], help="completion lengths, at G = --base-G")
    p.add_argument("--groups", type=ints, default=[4, 8, 16], help="group sizes, at --base-length tokens")
    p.add_argument("--base-length", type=int, default=64, help="the completion length of the G series")
    p.add_argument("--base-G", type=int, default=8, help="the G of the completion-length series")
    p.add_argument("--sides", default="trl,grpo", help="side_by_side.py's --sides")
    p.add_argument("--modes", default="full", help="side_by_side.py's --modes: full, lora")
    p.add_argument("--steps", type=int, default=4, help="optimizer steps per run (the work's --max-steps)")
    p.add_argument("--repeats", type=int, default=1, help="alternating runs of each side per setting")
    p.add_argument("--reuse", action="store_true", help="keep the settings whose side_by_side.json is there")
    args, passthrough = p.parse_known_args(argv)
    clash = [a for a in passthrough if a.split("=")[0] in OWN_FLAGS]
    if clash:
        p.error(f"{' '.join(clash)}: set by this script (--lengths, --groups, --steps, --sides, --modes, ...)")
    args.out = args.out.resolve()
    return args, passthrough


def main(argv=None) -> None:
    args, passthrough = parse_args(argv)
    rows = series(args.lengths, args.groups, args.base_length, args.base_G)
    todo = settings(rows)
    side_by_side.parse_args(side_by_side_argv(todo[0], args, passthrough))  # bad flags stop it before any run
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"settings: {', '.join(s.name for s in todo)}; sides {args.sides}, modes {args.modes}, "
          f"{args.steps} steps, {args.repeats} repeat(s); into {args.out}", flush=True)
    table = write_report(cost_rows(rows, sweep(todo, args, passthrough)), args.out)
    print(f"\n{table}\n\n{args.out / 'cost_growth.png'}")


if __name__ == "__main__":
    main()
