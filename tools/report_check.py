"""``nox -s report``: the HTML report of a passing and of a failing run, checked in a real headless Chromium.

Two real runs (the TP path at world size 2): FM-14 with its variants, which
passes and holds a HUNG proof with stacks; and an ad-hoc run that kills rank 1
but expects CLEAN, which fails. Each report.html is loaded in Chromium
(``tools/browser.py``), screenshot to ``<out>/pass.png`` and ``<out>/fail.png``,
and fails the session on a console error, an uncaught exception, a failed
load, a blank screenshot, or text that is not there: the overall verdict, the
baseline delta line, a hung rank's stack, and, in the failing report, rank 1
(the rank the fault killed) named as the root cause. Before that the checker
proves it can fail, on a blank page and on a page that logs an error.

    python -m tools.report_check [--out reports/browser]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

from tools.browser import BrowserMissing, Chromium, PageCheck, find_chromium

KILL = "generator.call=kill(SIGKILL)@rank=1,chunk=2,hit=1"
RUNS = {
    "pass": (["FM-14"], 0, ["Overall: PASS", "Baseline delta:", "stack of rank 0", "rank0.log"]),
    "fail": (["--fault", KILL, "--expect", "clean"], 1,
             ["Overall: FAIL", "Baseline delta:", "root cause", "rank 1, ended by its own fault (SIGKILL)"]),
}
SELF_TEST = {
    "blank.html": "<!doctype html><html><body></body></html>",
    "console-error.html": '<!doctype html><html><body><h1>tp-breakit</h1><p>text</p>'
                          '<script>console.error("planted error")</script></body></html>',
}


def problems(check: PageCheck, must_show: list[str]) -> list[str]:
    """Everything wrong with one loaded page (empty: fine)."""
    found = [f"browser error: {e}" for e in check.errors]
    if check.colours <= 1:
        found.append("blank page: the screenshot has a single colour")
    found += [f"not on the page: {text!r}" for text in must_show if text not in check.text]
    return found


def _self_test(browser: Chromium, out: Path) -> list[str]:
    """The checker must flag a blank page and a console error, or its green means nothing."""
    failures = []
    for name, html in SELF_TEST.items():
        page = out / "selftest" / name
        page.parent.mkdir(parents=True, exist_ok=True)
        page.write_text(html)
        if not problems(browser.check(page.resolve().as_uri(), page.with_suffix(".png")), []):
            failures.append(f"self-test: the checker found nothing wrong with {name}")
    return failures


def _run(name: str, args: list[str], want_rc: int, root: Path) -> tuple[Path | None, str]:
    proc = subprocess.run([sys.executable, "-m", "harness", "run", *args, "--report-dir", str(root), "-q"],
                          capture_output=True, text=True, timeout=300, check=False)
    if proc.returncode != want_rc:
        return None, (f"{name} run: 'python -m harness run {' '.join(args)}' exited {proc.returncode}, expected "
                      f"{want_rc}:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return (root / "latest").resolve(), ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.report_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("reports/browser"), help="where runs and screenshots go")
    args = parser.parse_args(argv)
    try:
        binary = find_chromium()
    except BrowserMissing as exc:
        print(f"nox -s report: {exc}", file=sys.stderr)
        return 2
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    failures, doc = [], {"chromium": binary, "pages": {}}
    with Chromium(binary) as browser:
        failures += _self_test(browser, args.out)
        for name, (run_args, want_rc, must_show) in RUNS.items():
            run_dir, error = _run(name, run_args, want_rc, args.out / "runs")
            if run_dir is None:
                failures.append(error)
                continue
            check = browser.check((run_dir / "report.html").as_uri(), args.out / f"{name}.png")
            found = problems(check, must_show)
            doc["pages"][name] = {"report": str(run_dir / "report.html"), "screenshot": str(args.out / f"{name}.png"),
                                  "errors": check.errors, "colours": check.colours, "problems": found}
            failures += [f"{name} report ({run_dir / 'report.html'}): {p}" for p in found]
            print(f"{name}: {run_dir / 'report.html'} -> {args.out / f'{name}.png'}: "
                  + ("ok" if not found else f"{len(found)} problems"))
    (args.out / "check.json").write_text(json.dumps({**doc, "failures": failures}, indent=2) + "\n")
    for failure in failures:
        print(f"FAIL {failure}", file=sys.stderr)
    print(f"report check: {'FAIL' if failures else 'PASS'} ({args.out / 'check.json'})")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
