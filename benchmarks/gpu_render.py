"""``gpu.json`` as Markdown (the body of docs/GPU.md) and its overall verdict."""

from __future__ import annotations


def all_ok(doc: dict) -> bool:
    """No section errored, no unsafe table entry, every output check and suite verdict held."""
    problems = problems_of(doc)
    return not problems


def problems_of(doc: dict) -> list[str]:
    out = [f"section {name} failed" for name in doc.get("sections", {}) if "error" in doc.get(name, {})]
    for key, table in doc.get("dtypes", {}).items():
        if isinstance(table, dict) and table.get("unsafe"):
            out.append(f"dtypes {key}: {len(table['unsafe'])} unsafe table entries")
    for name, row in doc.get("outputs", {}).items():
        if isinstance(row, dict) and not row.get("ok", True):
            out.append(f"outputs {name}: {row.get('check')} failed")
    suite = doc.get("suite", {})
    if suite.get("differ"):
        out.append(f"suite: {len(suite['differ'])} scenarios differ between cpu and cuda")
    for device, failed in suite.get("failed", {}).items():
        if failed:
            out.append(f"suite on {device}: {len(failed)} scenarios did not PASS")
    dig = doc.get("digest", {})
    if dig.get("agree", {}).get("mismatches") or dig.get("flips", {}).get("missed"):
        out.append("digest: device hash disagrees with the CPU or missed a flip")
    return out


def _env(doc: dict) -> list[str]:
    e = doc.get("environment", {})
    if "error" in e:
        return ["Environment probe failed:", "", "```", e["error"], "```"]
    return [f"- device: {e.get('device')} (compute capability {e.get('capability')}, {e.get('memory_gib')} GiB), "
            f"{e.get('gpus')} GPU(s), {e.get('cpus')} CPUs",
            f"- driver {e.get('driver')}, CUDA {e.get('cuda')}, NCCL {e.get('nccl')}",
            f"- torch {e.get('torch')} (git {str(e.get('git'))[:12]}), Python {e.get('python')}"]


def _context(doc: dict) -> list[str]:
    c = doc.get("context", {})
    if not c or "error" in c:
        return [f"(context probe: {c.get('error', 'not run')[-300:]})"]
    return [f"- CUDA context: {c['one']['create_s'][0]:.2f} s alone, {max(c['two']['create_s']):.2f} s for two "
            f"processes at once; exit with a live context: {c['one']['exit_all_s']:.2f} s (one), "
            f"{c['two']['exit_all_s']:.2f} s (two)"]


def _dtypes(doc: dict) -> list[str]:
    lines = ["| probe (ws 1) | dtypes | carried | all_reduced | unsafe | conservative | explained |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    details = []
    for key, t in doc.get("dtypes", {}).items():
        if "error" in t:
            details.append(f"- {key}: probe failed: `{t['error'][-300:]}`")
            continue
        lines.append(f"| {key} | {t['dtypes']} | {len(t['carried'])} | {len(t['reduced'])} | {len(t['unsafe'])} "
                     f"| {len(t['conservative'])} | {len(t['explained'])} |")
        details.append(f"- {key} carries: {', '.join(t['carried'])}; all_reduces: {', '.join(t['reduced'])}")
        for kind in ("unsafe", "conservative", "explained"):
            for e in t[kind]:
                why = e.get("reason") or e.get("error") or ""
                details.append(f"  - {kind}: {e['dtype']} {e['op']}: {why}")
    return lines + [""] + details


def _outputs(doc: dict) -> list[str]:
    lines = ["| run | exit | output digest | max abs diff vs cpu/gloo/ws1 | check | ok | chunk ms (median) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in doc.get("outputs", {}).items():
        diff = r.get("max_abs_diff")
        lines.append(f"| {name} | {r['exit']} | `{r.get('output_digest')}` | {'-' if diff is None else f'{diff:.3g}'} "
                     f"| {r['check']} | {'yes' if r['ok'] else 'NO'} | {r.get('chunk_ms_median')} |")
    return lines


def _suite(doc: dict) -> list[str]:
    s = doc.get("suite", {})
    if "error" in s:
        return ["```", s["error"], "```"]
    lines = []
    for device, run in s.get("runs", {}).items():
        passed = sum(v["verdict"] == "PASS" for v in run["scenarios"].values())
        lines.append(f"- tensors on {device}: {passed}/{len(run['scenarios'])} PASS in {run['seconds']} s "
                     f"(pytest exit {run['exit']}; {' '.join(run['tail'])})")
    lines.append(f"- same verdict on cpu and cuda: {s.get('same_verdict')}; different: {s.get('differ') or 'none'}; "
                 f"only on one side: {(s.get('only_cpu') or []) + (s.get('only_cuda') or []) or 'none'}")
    for device, failed in s.get("failed", {}).items():
        if failed:
            lines.append(f"- not PASS on {device}: {', '.join(failed)}")
    return lines


def _digest(doc: dict) -> list[str]:
    d = doc.get("digest", {})
    if "error" in d:
        return ["```", d["error"], "```"]
    if not d:
        return ["(not run)"]
    lines = [f"- device hash equal on CPU and GPU: {d['agree']['cases'] - len(d['agree']['mismatches'])}"
             f"/{d['agree']['cases']} cases; one-bit flips caught: {d['flips']['trials'] - d['flips']['missed']}"
             f"/{d['flips']['trials']}",
             f"- one chunk's inputs ({d['chunk']['bytes']} bytes): host {d['chunk']['host_us']} us, "
             f"device {d['chunk']['device_us']} us", "",
             "| bytes | host: copy + blake2b (us) | device hash + 8-byte copy (us) |", "| --- | --- | --- |"]
    lines += [f"| {r['bytes']} | {r['host_us']} | {r['device_us']} |" for r in d["sizes"]]
    return lines


def _overhead(doc: dict) -> list[str]:
    o = doc.get("overhead", {})
    if "error" in o:
        return ["```", o["error"], "```"]
    lines = ["Per run: rank 0's median chunk latency after warm-up; overhead = that over the `none` run next to it "
             "(median of the repetitions, [p25, p75]).", "",
             "| setup | ws | configuration | chunk ms (median of runs) | overhead % median [p25, p75] |",
             "| --- | --- | --- | --- | --- |"]
    for name, section in o.items():
        for ws, rows in section.get("world_sizes", {}).items():
            for config, row in rows.items():
                pct = row.get("overhead_pct")
                cell = "baseline" if pct is None else f"{pct['median']:+.1f} [{pct['p25']:+.1f}, {pct['p75']:+.1f}]"
                lines.append(f"| {name} | {ws} | {config} | {row['run_median_ms']['median']:.2f} | {cell} |")
    return lines


def markdown(doc: dict) -> str:
    parts = [f"# GPU run ({doc.get('started')})", "", *_env(doc), *_context(doc), "",
             "## NCCL and gloo dtype tables (tp/dtypes.py) against the device", "", *_dtypes(doc), "",
             "## python -m tp outputs", "", *_outputs(doc), "",
             "## Break-it suite at world size 2 on gloo: CPU tensors vs CUDA tensors", "", *_suite(doc), "",
             "## Digests on the device", "", *_digest(doc), "",
             "## Guardrail overhead per chunk", "", *_overhead(doc), "",
             f"Sections (seconds): {doc.get('sections')}", "",
             "Problems: " + ("; ".join(problems_of(doc)) or "none")]
    return "\n".join(parts) + "\n"
