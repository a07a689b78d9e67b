"""``bench.md``: the numbers of ``bench.json`` as Markdown tables, targets first."""

from __future__ import annotations


def _table(header: list[str], rows: list[list[object]]) -> list[str]:
    def cell(value: object) -> str:
        return "–" if value is None else str(value).replace("|", "\\|")

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return lines + [""]


def _f(value: float | None, fmt: str) -> str | None:
    return None if value is None else format(value, fmt)


def machine(doc: dict) -> list[str]:
    m = doc["machine"]
    return [
        f"{m['cpu_count']} CPUs ({m['cpus_usable']} usable, {m['cpu_model']}), torch {m['torch']}, "
        f"Python {m['python']}, {m['platform']}.",
        f"Load average (1/5/15 min) at start {m['load_at_start']}, at end {doc.get('load_at_end')}; "
        f"total bench time {doc.get('total_s')} s; command `{doc['command']}`.",
        "",
    ]


def targets(rows: list[dict]) -> list[str]:
    return ["## Targets", ""] + _table(
        ["target", "measured", "verdict", "what bounds it"],
        [[r["target"], r["measured"], f"**{r['verdict']}**", r["bound"]] for r in rows])


def launch(s: dict) -> list[str]:
    rows = []
    for name, mode in s["modes"].items():
        for rank, st in [*mode["per_rank_ms"].items(), ("all", mode["all_ranks_ms"])]:
            rows.append([name, rank, st["n"], _f(st["median"], ".1f"), _f(st["p95"], ".1f"), _f(st["max"], ".1f")])
    return [f"## 1. Launch cost (world size {s['world_size']}, {s['launches_per_mode']} launches per row)", "",
            f"Launch start (store hosting included) to each rank's `TP-EVENT init`. One-time zygote start "
            f"(torch imported, excluded below): **{s['zygote_start_s']:.2f} s**. Subprocess / zygote "
            f"(median): **{s['ratio_subprocess_over_zygote']}x**.", ""] + _table(
        ["launch", "rank", "n", "median ms", "p95 ms", "max ms"], rows)


def ttc(s: dict) -> list[str]:
    anchors = list(s["anchors_s"])
    header = ["scenario", "proves", "runs", "median s", "p95 s", "max s",
              *[f"{k.replace('_', ' ')} {s['anchors_s'][k]:g} s / p95" for k in anchors], "failed runs"]

    def row(r: dict) -> list[object]:
        t = r["ttc_s"]
        ratios = [f"{r['anchor_over_p95'][k]:,}x" if k in r["anchor_over_p95"] else None for k in anchors]
        return [r["id"], r["proves"], r["runs"], _f(t["median"], ".3f"), _f(t["p95"], ".3f"), _f(t["max"], ".3f"),
                *ratios, r["failed_runs"]]

    lines = [f"## 2. Time to crash (world size {s['world_size']}, {s['runs_per_scenario']} serial runs per "
             f"scenario, {s['launch']} launch)", "",
             "Last rank's exit minus the `TP-FAULT` instant, from each run's result. Anchors: what the same "
             "fault costs without the guardrails (collective timeouts, watchdogs), as a multiple of the p95.", ""]
    lines += _table(header, [row(r) for r in s["scenarios"]])
    if s.get("reference"):
        lines += ["Reference rows (not guarded scenarios of the catalog): the frozen-peer scenarios with a "
                  "shorter watchdog peer timeout.", ""]
        lines += _table(header, [row(r) for r in s["reference"]])
    return lines


def _pct(p: dict | None, *, extremes: bool) -> str | None:
    if p is None:
        return None
    text = f"{p['median']:+.2f} [{p['ci95'][0]:+.2f} … {p['ci95'][1]:+.2f}]"
    return text + (f" (p25 {p['p25']:+.2f}, p75 {p['p75']:+.2f})" if extremes else "")


def overhead(s: dict) -> list[str]:
    rows = []
    low_q = s["low_quantile"]
    for ws, configs in s["world_sizes"].items():
        for name, c in configs.items():
            run, low = c["run_median_ms"], c[f"run_p{low_q}_ms"]
            mode = name.split("/")[-1] if name.startswith("all/") else None
            rows.append([
                ws, name, c["guardrails"], c["digest_every"] if c["guardrails"] != "none" else "(digest off)",
                f"{run['median']:.2f} [{run['p25']:.2f}–{run['p75']:.2f}]",
                _pct(c["overhead_pct"], extremes=True),
                None if c["overhead_pooled_pct"] is None else f"{c['overhead_pooled_pct']:+.2f}",
                f"{low['median']:.2f}",
                _pct(c[f"overhead_p{low_q}_pct"], extremes=False),
                None if mode is None else f"≤ {s['targets_pct'][mode]:g} %",
            ])
    plan = ", ".join(f"ws {ws}: {p['reps']} interleaved repetitions of {p['chunks']} chunks"
                     for ws, p in s["plan"].items())
    return [f"## 3. Guardrail overhead per chunk ({plan}; first {s['warmup_chunks']} chunks of each run dropped, "
            f"{s['launch']} launch)", "",
            "Per run: the median of rank 0's `chunk_latency_ms`. Overhead per repetition: `all` over the `none` "
            "run of the same repetition, minus 1; shown as the median over repetitions [its 95 % confidence "
            "interval] (and the repetitions' p25, p75). Pooled: "
            "median of every chunk of a configuration over the baseline's. The p10 columns repeat it with each "
            "run's 10th-percentile chunk: the chunks nothing else on the box delayed.", ""] + _table(
        ["ws", "config", "TP_GUARDRAILS", "TP_DIGEST_EVERY", "run median ms [p25–p75]",
         "overhead % median [95 % CI] (p25, p75)", "pooled %", f"run p{low_q} ms", f"overhead % on p{low_q} [95 % CI]",
         "target"], rows)


def reference(s: dict) -> list[str]:
    rows = []
    for ws, ops in s["world_sizes"].items():
        for name, st in ops.items():
            rows.append([ws, name, st["median_us"], st["p95_us"], st["min_us"]])
    pc = s["per_chunk"]
    return [f"## 4. Reference: gloo and store latency on this box ({s['iters']} timed ops each)", "",
            f"A steady-state chunk runs {pc['generator_calls']} generator calls = {pc['all_reduces']} all_reduces, "
            f"{pc['envelope_broadcasts']} envelope broadcasts and, with the digest on, "
            f"{pc['digest_all_gathers']} all_gather.", ""] + _table(
        ["ws", "operation", "median µs", "p95 µs", "min µs"], rows)


def suite(s: dict) -> list[str]:
    rows = []
    for name, run in s["runs"].items():
        went = "; ".join(f"{k}: {v['scenarios']} scenarios, {v['seconds']:.1f} s"
                         for k, v in sorted(run["where_time_went"].items()))
        rows.append([name, f"{run['wall_s']:.1f}", run["pytest_summary"] or f"exit {run['returncode']}",
                     run["load_before"], went])
    return [f"## 5. Break-it suite wall time (target ≤ {s['target_s']:g} s)", "",
            f"`{next(iter(s['runs'].values()))['command']}` (serial: without `-n`), reports in the bench's "
            "own directory.", ""] + _table(["run", "wall s", "pytest", "load before", "scenario time by outcome"], rows)


def flight(s: dict) -> list[str]:
    return ["## 6. Flight trace cost", "", s["measured"] + ".", ""] + _table(
        ["per collective µs", "collectives per chunk", "chunk ms", "cost per chunk µs", "cost %", "dump ms"],
        [[s["per_collective_us"], s["collectives_per_chunk"], s["chunk_ms"], s["cost_per_chunk_us"], s["cost_pct"],
          s["dump_ms"]]])


def hang(s: dict) -> list[str]:
    rows = [[r["id"], r["runs"], _f(r["verdict_s"]["median"], ".3f"), _f(r["verdict_s"]["p95"], ".3f"),
             _f(r["verdict_s"]["max"], ".3f"), None if r["old_deadline_over_p95"] is None
             else f"{r['old_deadline_over_p95']}x", r["outcomes"], r["failed_runs"]] for r in s["scenarios"]]
    return [f"## 7. Fault -> HUNG verdict (stall window {s['stall_s']:g} s, target p95 ≤ {s['target_s']:g} s)", "",
            s["measured"] + ".", ""] + _table(
        ["hang proof", "runs", "median s", "p95 s", "max s", f"old deadline {s['old_deadline_s']:g} s / p95",
         "outcomes", "failed runs"], rows)


def false_alarm(s: dict) -> list[str]:
    d = s["run_duration_s"]
    return [f"## 8. False PEER_LOST on an oversubscribed box ({s['busy_processes']} busy processes, "
            f"{s['cpus']} CPUs)", "",
            f"{s['runs']} healthy runs (the issue asks ≥ {s['issue_asks_runs']}): **{s['peer_lost']} PEER_LOST**, "
            f"{s['not_clean']} not CLEAN; run duration median {d['median']} s, max {d['max']} s.", ""]


def engine_cost(s: dict) -> list[str]:
    rows = []
    for ws, r in s["per_collective"].items():
        for c in ("none", "disarmed", "armed"):
            cpu, wall = r[c]["cpu_us"], r[c]["wall_us"]
            ratio = r.get(f"{c}_over_none")
            rows.append([ws, c, f"{cpu['median']:.0f} [{cpu['p25']:.0f}–{cpu['p75']:.0f}]",
                         f"{wall['median']:.0f} [{wall['p25']:.0f}–{wall['p75']:.0f}]",
                         None if ratio is None else f"{ratio['cpu']['median']:.3f} [{ratio['cpu']['p25']:.3f}–"
                                                    f"{ratio['cpu']['p75']:.3f}]",
                         None if ratio is None else f"{ratio['wall']['median']:.3f}", f"{r['reps']} x {r['ops_repeat']}"])
    plan = ", ".join(f"ws {ws}: {r['reps']} runs of {r['collectives_per_run']} collectives"
                     for ws, r in s["per_collective"].items())
    lines = [f"## 9. Zero-touch bootstrap cost ({plan}, per configuration, interleaved)", "",
             s["measured"] + f". Armed: `{s['armed_fault']}` (never fires). Ratios per repetition over its `none` "
             "run; median [p25–p75].", ""]
    lines += _table(["ws", "bootstrap", "CPU µs/collective", "wall µs/collective", "CPU / none", "wall / none",
                     "runs x OPS_REPEAT"], rows)
    e = s.get("engine")
    if e is None:
        return lines + ["Whole fixture-engine runs: not measured in this plan (`--quick` times c10d_ops.py only).", ""]
    rows = [[c, f"{e[c]['wall_s']['median']:.2f} [{e[c]['wall_s']['p25']:.2f}–{e[c]['wall_s']['p75']:.2f}]",
             f"{e[c]['cpu0_s']['median']:.2f} [{e[c]['cpu0_s']['p25']:.2f}–{e[c]['cpu0_s']['p75']:.2f}]"]
            for c in ("none", "disarmed")]
    rows.append(["overhead %", _pct(e["overhead_pct"]["wall"], extremes=True),
                 _pct(e["overhead_pct"]["cpu0"], extremes=True)])
    return lines + [f"Whole healthy runs of `dtensor_engine.py` at ws 2 ({e['runs']} interleaved pairs; rank 0 issues "
                    f"{e['collectives_rank0']} collectives): launch to last exit, and rank 0's CPU. Per collective, "
                    f"disarmed costs {s['per_collective']['2']['disarmed_minus_none_cpu_us']['median']:+.1f} µs CPU "
                    f"= **{s['derived_pct']:+.3f} %** of the run [95 % CI {s['derived_pct_ci95'][0]:+.3f} … "
                    f"{s['derived_pct_ci95'][1]:+.3f}] (target ≤ {s['target_pct']:g} %).", ""] + _table(
        ["bootstrap", "wall s [p25–p75]", "rank-0 CPU s [p25–p75]"], rows)


def engine_hang(s: dict) -> list[str]:
    v, w = s["verdict_s"], s["run_wall_s"]
    return [f"## 10. Zero-touch fault -> HUNG verdict (`{s['fixture']}`, `{s['fault']}`, ws {s['world_size']}, "
            f"stall window {s['stall_s']:g} s, target p95 ≤ {s['target_s']:g} s)", "", s["measured"] + ".", ""] + _table(
        ["runs", "median s", "p95 s", "max s", "outcomes", "failed runs", "run wall median s"],
        [[s["runs"], _f(v["median"], ".3f"), _f(v["p95"], ".3f"), _f(v["max"], ".3f"), s["outcomes"], s["failed_runs"],
          _f(w["median"], ".1f")]])


RENDERERS = {"launch": launch, "ttc": ttc, "overhead": overhead, "reference": reference, "suite": suite,
             "flight": flight, "hang": hang, "false_alarm": false_alarm,
             "engine_cost": engine_cost, "engine_hang": engine_hang}


def markdown(doc: dict, target_rows: list[dict]) -> str:
    """The whole ``bench.md``."""
    lines = ["# tp-breakit bench", ""] + machine(doc) + targets(target_rows)
    for name, section in doc["sections"].items():
        if "error" in section:
            lines += [f"## {name}: not measured", "", f"```\n{section['error']}\n```", ""]
        else:
            lines += RENDERERS[name](section)
    return "\n".join(lines).rstrip() + "\n"


def page(doc: dict, body: str) -> str:
    """docs/PERFORMANCE.md: the bench's own report under a header that says where it came from."""
    machine = doc.get("machine", {})
    return "\n".join([
        "# Performance",
        "",
        f"Generated by `{doc.get('command', 'python -m benchmarks')}` (`nox -s bench`) on "
        f"{machine.get('started', 'an unrecorded date')} ({machine.get('cpus_usable')} CPUs, torch {machine.get('torch')}): "
        "do not edit by hand, rerun the bench. "
        "Speed is measured here, never asserted in tests: scenario deadlines are crash-vs-hang bounds.",
        "",
        body.rstrip(),
        "",
    ])
