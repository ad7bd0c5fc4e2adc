"""`grpo reproduce`'s report: results.md from the per-seed figures, and the names it gives each method.

`results_markdown` writes the results table (mean ± sd over the seeds), the greedy accuracy per seed, the
claims (`claim_rows`: each a paired per-seed difference, its 95% interval and a verdict, `grpo.stats`;
over seeds and problems where every model's per-problem scores were kept, `per_problem`),
maj@k and pass@k against k, with --ood the same greedy figures and claims on each out-of-distribution file,
and a Setup paragraph. What was not measured is not shown: without sampled
completions (a multi-turn task is scored by greedy episodes only) there are no sampled columns and no
maj@k / pass@k section, and the Setup describes only the methods that ran.
"""

from __future__ import annotations

from grpo.config import DemoConfig
from grpo.plan import Architecture, PlanInput, plan_memory
from grpo.stats import binomial_ci, mean_ci, mean_std, paired_ci, verdict
from grpo.train.sft import matching_clock

SFT_MORE = "sft_more"
"""SFT continued from `sft_best` for the GRPO stage's training time (needs `grpo` among the methods)."""
EXTRA_KEYS = {"strict": "strict_accuracy", "lenient": "lenient_accuracy", "tool_calls": "tool_call_share"}
"""An evaluation's extra greedy figures (`EvalResult.greedy_by_checker`) -> their key in results.json."""
BUDGET = {"cpu": "train_cpu_seconds", "wall": "train_seconds"}
"""sft_more's budget, per clock (`matching_clock`): the GRPO run's figure it is given."""
LABELS = {"sft": "SFT (sft_best)", "grpo": "GRPO (outcome)", "grpo_process": "GRPO (process)", "ppo": "PPO",
          "rft": "Online RFT", "iterative": "Iterative GRPO", "grpo_base": "GRPO from the base model",
          SFT_MORE: "more SFT (sft_more)"}
MODELS_HELD = {"sft": "policy", "grpo": "policy, reference", "grpo_process": "policy, reference",
               "ppo": "policy, reference, value (+ its optimizer)", "rft": "policy",
               "iterative": "policy, reference (reset each iteration)", "grpo_base": "policy, reference",
               SFT_MORE: "policy"}
CLAIMS = [("GRPO beats more SFT at equal compute (GRPO − sft_more)", "grpo", SFT_MORE),
          ("more SFT adds to sft_best (sft_more − sft_best)", SFT_MORE, "sft"),
          ("RL adds points over SFT (GRPO outcome − SFT)", "grpo", "sft"),
          ("GRPO from SFT beats GRPO from the base model (GRPO − grpo_base)", "grpo", "grpo_base"),
          ("GRPO matches or beats PPO at equal budget (GRPO − PPO)", "grpo", "ppo"),
          ("process supervision beats outcome supervision (process − outcome)", "grpo_process", "grpo"),
          ("GRPO beats online RFT (GRPO − RFT)", "grpo", "rft"),
          ("iterative GRPO adds to one run (iterative − GRPO)", "iterative", "grpo")]
"""The paper's claims that compare two models' accuracy: (claim, model a, model b), held when a - b > 0."""
PAPER_METHODS = ("grpo_process", "ppo", "rft", "iterative")
"""The methods that make a run one of the paper's comparisons (with GRPO and SFT), as its title says."""


def _pct(values: list[float]) -> str:
    if any(v != v for v in values):  # NaN: not measured (a multi-turn task samples no completions)
        return "-"
    mean, sd = mean_std([100 * v for v in values])
    return f"{mean:.1f}%" if len(values) == 1 else f"{mean:.1f} ± {sd:.1f}%"


def _mean(values: list[float], fmt: str = ".0f") -> str:
    return f"{mean_std(values)[0]:{fmt}}"


CLAIMS_HEAD = ["| claim | difference, points | 95% interval | verdict |", "|---|---|---|---|"]
"""The claims table's header (`claim_row` writes its rows)."""


def per_problem(per_seed: dict) -> bool:
    """Whether every model on every seed kept its per-problem greedy scores (results.json's `per_problem`):
    then the greedy claims' intervals carry the choice of problems as well as the seeds (`paired_ci`)."""
    return all("per_problem" in row for models in per_seed.values() for row in models.values())


def pair_claims(per_seed: dict, test_n: int) -> list[str]:
    """The claims table's rows for the `CLAIMS` both of whose models ran: the greedy accuracy of a − b, and,
    for a pair with `sft_more`, the same when only the formatted answer (strict), or any last number
    (lenient), counts. `per_seed`: seed -> model -> figures; `test_n`: the problems each was scored on."""
    seeds = list(per_seed)
    names = list(per_seed[seeds[0]])
    problems = per_problem(per_seed)
    acc = lambda m, key="greedy_accuracy": [per_seed[i][m][key] for i in seeds]  # noqa: E731
    rows = []
    for text, a, b in [(text, a, b) for text, a, b in CLAIMS if a in names and b in names]:
        for kind in ("", "strict", "lenient"):
            key = f"{kind}_accuracy" if kind else "greedy_accuracy"
            if kind and (SFT_MORE not in (a, b) or key not in per_seed[seeds[0]][a]):
                continue
            diffs = [100 * (x - y) for x, y in zip(acc(a, key), acc(b, key))]
            table = [[100 * (x - y) for x, y in zip(per_seed[i][a]["per_problem"][key],
                                                     per_seed[i][b]["per_problem"][key])]
                     for i in seeds] if problems else None
            rows.append(claim_row(f"{text}, {kind}" if kind else text, diffs,
                                  mean_std(acc(a, key) + acc(b, key))[0], test_n, table))
    return rows


def claim_rows(per_seed: dict, kmax: int, test_n: int) -> tuple[list[str], list[str]]:
    """The claims table (difference, interval, verdict) and the notes under it. The +15-point target is the
    paper's comparison (RL over the SFT model it starts from); with `sft_more` in the run the question is
    GRPO against more SFT at equal compute, and that row already gives GRPO − SFT with its interval."""
    seeds = list(per_seed)
    names = list(per_seed[seeds[0]])
    acc = lambda m, key="greedy_accuracy": [per_seed[i][m][key] for i in seeds]  # noqa: E731
    rows = [*CLAIMS_HEAD, *pair_claims(per_seed, test_n)]
    if "grpo" in names and per_seed[seeds[0]]["grpo"]["pass_at_k"]:  # §5.2.2: maj@K rises more than pass@K
        s = lambda m, key: [per_seed[i][m][key][kmax] for i in seeds]  # noqa: E731
        diffs = [100 * ((gm - sm) - (gp - sp)) for gm, sm, gp, sp in
                 zip(s("grpo", "maj_at_k"), s("sft", "maj_at_k"), s("grpo", "pass_at_k"),
                     s("sft", "pass_at_k"))]
        rows.append(claim_row(f"RL lifts maj@{kmax} more than pass@{kmax} (GRPO's maj@{kmax} gain − its "
                               f"pass@{kmax} gain)", diffs, 0.5, test_n))
    notes = []
    if "grpo" in names and SFT_MORE not in names:
        gain = mean_std([100 * (x - y) for x, y in zip(acc("grpo"), acc("sft"))])[0]
        notes.append(f"- The paper-sized gain of +15 points over SFT is {'met' if gain >= 15 else 'NOT met'} "
                     f"on average ({gain:+.1f}).")
    if "ppo" in names and "grpo" in names:
        g = [per_seed[i]["grpo"]["run_peak_mib"] for i in seeds]
        p = [per_seed[i]["ppo"]["run_peak_mib"] for i in seeds]
        ratios = [x / y for x, y in zip(g, p)]
        gs, ps = (mean_std([per_seed[i][m]["state_mib"] for i in seeds])[0] for m in ("grpo", "ppo"))
        notes.append(f"- Less memory without a value model: GRPO's peak memory is {min(ratios):.2f}-"
                     f"{max(ratios):.2f}x PPO's over the seeds ({_mean(g)} vs {_mean(p)} MiB above the "
                     "runtime, mean; "
                     f"{'holds on every seed' if max(ratios) <= 0.75 else 'NOT met on every seed'}: the "
                     "target is <= 0.75x). Model state alone (weights, gradients, Adam moments, reference, "
                     f"value model): {gs:.1f} vs {ps:.1f} MiB ({gs / ps:.2f}x). At 7B parameters `grpo plan` "
                     f"gives {_plan_line()}.")
    notes.append(noise_note(len(seeds), test_n, "the test split", per_problem(per_seed)))
    return rows, notes


def noise_note(seeds: int, test_n: int, what: str, problems: bool = False) -> str:
    """The note on what a claim's interval carries, for `what` (a test set of `test_n` problems); `problems`:
    the greedy claims' intervals are `paired_ci`'s, over seeds and problems."""
    if problems:
        return (f"- Noise: {what} has {test_n} problems (one problem = {100 / test_n:.2f} points). A greedy "
                "claim's interval is taken over seeds and problems (`grpo.stats.paired_ci`): the per-problem "
                "differences of the two models, seeds and problems as two crossed random factors, so it "
                "carries the spread of training"
                + (" (SFT and RL)" if seeds > 1 else " only as far as one seed shows it (none: run more "
                   "--seeds)")
                + " and the choice of problems; it errs wide by the seed-by-problem interaction. "
                + ("Sampled claims (maj@k, pass@k) take the seeds' Student-t interval only." if seeds > 1
                   else ""))
    return (f"- Noise: {what} has {test_n} problems (one problem = {100 / test_n:.2f} points); "
            + ("the interval is the 95% Student-t interval of the mean of the per-seed differences: it "
               "carries the spread of training (SFT and RL). Every seed is scored on the same problems, so "
               "the choice of problems adds its own noise, which it does not carry (a model's accuracy near "
               f"50% is within ±{196 * (0.25 / test_n) ** 0.5:.1f} points of its value on all such problems, "
               "95%)."
               if seeds > 1 else
               "with one seed the interval is the test set's binomial noise only (training's own spread "
               "is not measured: run more --seeds)."))


def claim_row(text: str, diffs: list[float], p: float, test_n: int, table: list | None = None) -> str:
    """One row of the claims table: mean difference (per seed), 95% interval, verdict. `table`: the
    differences per seed and problem (points), when kept: the interval is then `paired_ci`'s."""
    if table is not None:
        mean, lo, hi = paired_ci(table)
    elif len(diffs) > 1:
        mean, lo, hi = mean_ci(diffs)
    else:
        mean, lo, hi = (100 * x for x in binomial_ci(diffs[0] / 100, min(max(p, 0.05), 0.95), test_n))
    per_seed = ", ".join(f"{d:+.1f}" for d in diffs)
    return f"| {text} | {mean:+.1f} ({per_seed}) | [{lo:+.1f}, {hi:+.1f}] | {verdict(lo, hi)} |"


def report_title(names: list[str]) -> str:
    """results.md's title: what the run compared. `names`: the models in table order (sft first).

    >>> report_title(["sft", "grpo", "sft_more"])
    'Results: GRPO against more SFT at equal compute'
    >>> report_title(["sft", "grpo", "ppo"])
    "Results: the paper's comparisons of SFT (sft_best), GRPO (outcome) and PPO"
    >>> report_title(["sft", "grpo", "grpo_base"])
    'Results: GRPO (outcome) and GRPO from the base model against SFT'
    """
    rl = [m for m in names if m not in ("sft", SFT_MORE)]
    parts = ["GRPO against more SFT at equal compute"] if SFT_MORE in names else []
    if any(m in PAPER_METHODS for m in rl):
        parts.append("the paper's comparisons of " + _and([LABELS[m] for m in ("sft", *rl)]))
    elif rl and (rl != ["grpo"] or not parts):  # grpo alone beside sft_more: the first part says it all
        parts.append(_and([LABELS[m] for m in rl]) + " against SFT")
    return "Results: " + ", and ".join(parts or ["SFT"])


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _plan_line() -> str:
    arch = Architecture(num_layers=32, hidden_size=4096, intermediate_size=11008, num_heads=32,
                        num_kv_heads=32,
                        head_dim=128, vocab_size=32000)  # Llama-2-7B's shape
    gib = {a: plan_memory(PlanInput(arch=arch, algorithm=a,
                                    precision="bf16")).total_bytes / 2**30 for a in ("grpo", "ppo")}
    return f"{gib['grpo']:.0f} GiB for GRPO vs {gib['ppo']:.0f} GiB for PPO (bf16, AdamW, no LoRA)"


def _column(per_seed: dict, name: str, key: str, k: int | None = None) -> list[float]:
    """One figure of model `name` on every seed (`k`: its value at k, NaN where it was not measured)."""
    return [per_seed[i][name][key] if k is None else per_seed[i][name][key].get(k, float("nan"))
            for i in per_seed]


def _tables(per_seed: dict, kmax: int, kinds: list[str], sampled: bool) -> tuple[list[str], list[str]]:
    """The results table (one row per model; `kinds`: its extra greedy figures; the sampled columns only when
    completions were sampled) and the greedy accuracy per seed."""
    seeds = list(per_seed)
    names = list(per_seed[seeds[0]])
    col = lambda name, key, k=None: _column(per_seed, name, key, k)  # noqa: E731
    sampled_head = f"sampled acc. | maj@{kmax} | pass@{kmax} | " if sampled else ""
    rows = [f"| model | greedy acc. | {''.join(f'{k} | ' for k in kinds)}{sampled_head}"
            "peak memory of the run | model state | training time | wall time | models held |",
            "|---|---|" + "---|" * len(kinds) + "---|" * (3 * sampled) + "---|---|---|---|---|"]
    for name in names:
        mib = lambda key, f=".0f": (  # noqa: E731
            f"{_mean(col(name, key), f)} MiB" if key in per_seed[seeds[0]][name] else "-")
        sampled_cells = (f"{_pct(col(name, 'sample_accuracy'))} | {_pct(col(name, 'maj_at_k', kmax))} | "
                         f"{_pct(col(name, 'pass_at_k', kmax))} | ") if sampled else ""
        rows.append(f"| {LABELS[name]} | {_pct(col(name, 'greedy_accuracy'))} | "
                    + "".join(f"{_pct(col(name, EXTRA_KEYS[k]))} | " for k in kinds)
                    + sampled_cells + f"{mib('run_peak_mib')} | "
                    f"{mib('state_mib', '.1f')} | {_mean(col(name, 'train_seconds'))} s | "
                    f"{_mean(col(name, 'seconds'))} s | {MODELS_HELD[name]} |")
    return rows, _by_seed(per_seed)


def _by_seed(per_seed: dict) -> list[str]:
    """Each model's greedy accuracy on each seed."""
    seeds = list(per_seed)
    rows = ["| model | " + " | ".join(f"seed {i}" for i in seeds) + " |", "|---|" + "---|" * len(seeds)]
    for name in per_seed[seeds[0]]:
        accs = _column(per_seed, name, "greedy_accuracy")
        rows.append(f"| {LABELS[name]} | " + " | ".join(f"{100 * v:.1f}%" for v in accs) + " |")
    return rows


def _ood_section(ood: dict | None) -> list[str]:
    """"Out of distribution": for each --ood file (results.json's `ood`: name -> its file, problems and
    per-seed figures), every model's greedy, strict and lenient accuracy, its greedy accuracy per seed, and
    the claims' pairs on it (`pair_claims`); nothing without --ood."""
    if not ood:
        return []
    lines = ["## Out of distribution", "",
             "Every model is also scored greedy (one completion at temperature 0, no sampling) on every "
             "problem of each file given to --ood, its prompts rendered with its own chat template as for "
             "the test split; no training job reads these files. Differences are taken per seed, as above.",
             ""]
    for name, test in ood.items():
        per_seed, n = test["per_seed"], test["num_prompts"]
        seeds = list(per_seed)
        models = list(per_seed[seeds[0]])
        kinds = [k for k in EXTRA_KEYS if EXTRA_KEYS[k] in per_seed[seeds[0]][models[0]]]
        keys = ["greedy_accuracy", *(EXTRA_KEYS[k] for k in kinds)]
        lines += [f"### {name} (`{test['file']}`, {n} problems)", "",
                  "| " + " | ".join(["model", "greedy acc.", *kinds]) + " |", "|---" * (2 + len(kinds)) + "|"]
        for m in models:
            cells = [LABELS[m], *(_pct(_column(per_seed, m, k)) for k in keys)]
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", "Greedy accuracy per seed:", "", *_by_seed(per_seed), ""]
        claims = pair_claims(per_seed, n)
        if claims:
            note = noise_note(len(seeds), n, "this file", per_problem(per_seed))
            lines += [*CLAIMS_HEAD, *claims, "", note, ""]
    return lines


def _curve(per_seed: dict, ks, n: int, temperature: float, sampled_n: int) -> list[str]:
    """maj@k and pass@k against k for every model, with the line that introduces them."""
    names = list(per_seed[next(iter(per_seed))])
    curve = [f"maj@k and pass@k against k (n={n} samples per problem at temperature {temperature:g}, on the "
             f"first {sampled_n} test problems):", "",
             "| model | " + " | ".join(f"k={k}" for k in ks) + " |", "|---|" + "---|" * len(ks)]
    for name in names:
        for key, what in (("maj_at_k", "maj@k"), ("pass_at_k", "pass@k")):
            curve.append(f"| {LABELS[name]} {what} | "
                         + " | ".join(_pct(_column(per_seed, name, key, k)) for k in ks) + " |")
    return [*curve, ""]


def _task_text(cfg: DemoConfig) -> str:
    sd, s0 = cfg.rl.data, cfg.sft
    if sd.source == "builtin:arithmetic":
        return (f"builtin:arithmetic with {sd.task_steps} operations per problem, values in "
                f"0..{sd.task_max_value}, steps of 1..{sd.task_max_delta}"
                + (", doubling and tripling" if sd.task_multiply else ""))
    return f"`{sd.source}` (test: `{sd.heldout_source or sd.source}`), model `{s0.model.path}`" + (
        f" with LoRA r={s0.model.lora.r}" if s0.model.lora else ", full fine-tuning")


def _more_text(per_seed: dict, cfg: DemoConfig, sfts: dict, more: dict) -> str:
    """How `sft_more` was given GRPO's training time, seed by seed ("" when it did not run)."""
    if not more:
        return ""
    seeds, s0 = list(per_seed), cfg.sft
    m = [more[(i, SFT_MORE)] for i in seeds]
    clock = matching_clock(s0.model.device)
    budget = ", ".join(f"{per_seed[i]['grpo'][BUDGET[clock]]:.0f}" for i in seeds)
    spent = [r.train_cpu_seconds if clock == "cpu" else r.train_seconds for r in m]
    return (f" `sft_more` continues each seed's sft_best on the training rows it did not reach (from row "
            f"{', '.join(str(sfts[i].rows_seen) for i in seeds)}) for as long as that seed's GRPO training "
            f"steps took, in {clock} seconds ({budget} s; it trained "
            f"{', '.join(f'{t:.0f} s in {r.steps} steps' for t, r in zip(spent, m))}), with "
            f"{s0.optim.schedule} decay over a horizon sized from sft_best's seconds per step, its "
            "checkpoint chosen on the same validation split (best at step "
            f"{', '.join(str(r.best_step) for r in m)}).")


def _rl_text(cfg: DemoConfig, methods: list[str]) -> str:
    """The RL methods that ran (`methods`), their shared budget and what sets each apart."""
    if not methods:
        return ""
    rl, base = cfg.rl, cfg.sft.model.path
    from_sft = [m for m in methods if m != "grpo_base"]
    who = "Every RL method" if len(methods) > 1 else LABELS[methods[0]]
    start = ("its seed's SFT checkpoint" + (f" (grpo_base: from `{base}`)" if "grpo_base" in methods else "")
             if from_sft else f"`{base}`")
    kl = "; ".join(text for m, text in (("ppo", "PPO: folded into the per-token reward"),
                                         ("rft", "RFT: no KL")) if m in methods)
    text = (f" {who} starts from {start} with {'the same budget: ' if len(methods) > 1 else ''}"
            f"{rl.train.steps} steps x {rl.train.prompts_per_step} prompts x {rl.grpo.G} samples, "
            f"lr={rl.optim.lr}, beta={rl.grpo.beta}{f' ({kl})' if kl else ''}, temperature "
            f"{rl.sampling.temperature:g}, max_new_tokens={rl.sampling.max_new_tokens}.")
    if "ppo" in methods:
        text += (" PPO: value model = a copy of the policy's body with a scalar head, value "
                 f"lr={rl.ppo.value_lr}, GAE gamma={rl.ppo.gamma} lambda={rl.ppo.lam}.")
    if "grpo_process" in methods:
        text += " Process supervision scores each line of working and the final answer (`arithmetic_steps`)."
    if "iterative" in methods:
        text += (" Iterative GRPO: the same steps in 2 iterations, the reference reset to the policy at the "
                 "second's start.")
    return text


def _setup(per_seed: dict, cfg: DemoConfig, sfts: dict, more: dict, n: int, test_n: int, sampled: bool,
           kinds: list[str]) -> str:
    """The Setup paragraph: the task, the evaluation, and how each model that was trained was trained."""
    seeds, s0 = list(per_seed), cfg.sft
    rl_methods = [m for m in per_seed[seeds[0]] if m not in ("sft", SFT_MORE)]
    sampled_text = (f"; sampled accuracy, maj@k and pass@k use n={n} samples per problem." if sampled else
                    "; no completions are sampled at temperature > 0, so there is no sampled accuracy, "
                    "maj@k or pass@k.")
    strict_text = "" if "strict" not in kinds else (
        " Strict accuracy reads the answer only where the format puts it (the last `#### N` line, the last "
        "box or the answer tag); lenient takes the last number anywhere; greedy accuracy is the first "
        "reward's own verdict.")
    stop_text = ("no early stop" if not s0.sft.patience
                 else f"stopped after {s0.sft.patience} evaluations without a new best")
    best = ", ".join(f"{sfts[i].best_step}" for i in seeds)
    return (
        f"Task: {_task_text(cfg)}; test split: {test_n} problems, the same for every seed and disjoint from "
        "training; no training job reads it (each runs with data.num_heldout=0). Greedy accuracy is one "
        f"completion at temperature 0 on every test problem{sampled_text}{strict_text} Prompts are rendered "
        f"with each evaluated model's own tokenizer and chat template. sft_best: up to {s0.sft.max_steps} "
        f"steps of {s0.sft.batch_size} demonstrations, lr {s0.optim.lr} with a {s0.optim.schedule} schedule "
        f"after {s0.optim.warmup_steps} warm-up steps, {stop_text}; its checkpoint chosen on a validation "
        f"split of {s0.data.num_validation} problems (disjoint from train and test), every "
        f"{s0.sft.eval_every} steps (best at step {best}).{_more_text(per_seed, cfg, sfts, more)}"
        f"{_rl_text(cfg, rl_methods)} Training time is the sum of the training steps alone (RL: `time/step`; "
        "SFT: `train_seconds`); wall time is the whole process's, loading and evaluations included (a run "
        "resumed by --reuse: its sittings' summed). Peak memory is each training process's peak resident set "
        "size during its training steps (evaluations excluded) above its resident size before any model was "
        "built, with glibc's mmap threshold at 64 KiB so that freed tensors leave the resident set and "
        "oneDNN's per-shape caches off, as in the planner's validation (docs/memory.md). With --jobs > 1 the "
        "processes share the 2 cores.")


def results_markdown(per_seed: dict, cfg: DemoConfig, sfts: dict, plots: list[str], n: int, ks, command: str,
                     seconds: float, test_n: int, sampled_n: int, more: dict, ood: dict | None = None) -> str:
    """results.md. `per_seed`: seed -> model name -> figures (results.json's), models in table order;
    `sfts`: seed -> sft_best's `SFTResult`; `more`: (seed, "sft_more") -> its `SFTResult` (empty when it
    did not run); `sampled_n`: the test problems sampled `n` times (0: none, no sampled figures shown);
    `ood`: results.json's `ood` (each --ood file's greedy figures; None: no such section)."""
    kmax, seeds = max(ks), list(per_seed)
    first = per_seed[seeds[0]][next(iter(per_seed[seeds[0]]))]
    kinds = [k for k in EXTRA_KEYS if EXTRA_KEYS[k] in first]
    rows, by_seed = _tables(per_seed, kmax, kinds, sampled_n > 0)
    claims, notes = claim_rows(per_seed, kmax, test_n)
    curve = _curve(per_seed, ks, n, cfg.rl.sampling.temperature, sampled_n) if sampled_n else []
    spread = "mean ± standard deviation over the seeds" if len(seeds) > 1 else "one seed: no spread measured"
    return "\n".join([
        "# " + report_title(list(per_seed[seeds[0]])),
        "",
        f"Produced by `{command}` in {seconds / 60:.0f} min on this project's 2-core CPU, {len(seeds)} "
        f"seed(s) ({', '.join(map(str, seeds))}); `results.json` beside it has every number. Each seed "
        f"trains its own SFT model and every method from it; figures are {spread}.",
        "",
        *rows,
        "",
        "Greedy test accuracy per seed:",
        "",
        *by_seed,
        "",
        "## Claims",
        "",
        "Each difference is taken per seed (the same SFT model and data under both methods) and then "
        "averaged; the verdict says whether the 95% interval excludes zero.",
        "",
        *claims,
        "",
        *notes,
        "",
        *curve,
        *_ood_section(ood),
        "## Setup",
        "",
        _setup(per_seed, cfg, sfts, more, n, test_n, sampled_n > 0, kinds),
        "",
        *[f"![{p}]({p})" for p in plots],
        "",
    ])
