"""``python -m tp``: run one rank (under torchrun or the harness) or spawn N.

With ``RANK`` in the environment this process is one rank. Without it,
``--world-size N`` spawns N local ranks on gloo/CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tp", description=__doc__)
    p.add_argument("--world-size", type=int, default=None, help="spawn this many local ranks (no RANK in env)")
    p.add_argument("--chunks", type=int, default=8, help="chunks rank 0 drives before SHUTDOWN (default 8)")
    p.add_argument("--reset-every", type=int, default=4, help="hard cut (cache reset) every N chunks (default 4)")
    p.add_argument("--backend", choices=("gloo", "nccl"), default="gloo", help="gloo on CPU, nccl on GPUs")
    p.add_argument("--list-failpoints", action="store_true", help="print every failpoint site as JSON lines")
    p.add_argument("--list-codes", action="store_true", help="print every fatal code as JSON lines")
    p.add_argument("--list-guardrails", action="store_true", help="print every guardrail as JSON lines")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = _parser().parse_args(argv)
    from tp import codes, failpoints, guardrails

    if args.list_failpoints:
        for site in failpoints.SITES:
            print(json.dumps(failpoints.declared(site)))
        return 0
    if args.list_codes:
        for c in codes.CODES.values():
            print(json.dumps({"code": c.name, "exit": c.exit, "fm": c.fm, "description": c.description}))
        return 0
    if args.list_guardrails:
        for name, description in guardrails.NAMES.items():
            print(json.dumps({"guardrail": name, "description": description}))
        return 0
    if args.chunks < 1 or args.reset_every < 1:
        print("tp: --chunks and --reset-every must be >= 1", file=sys.stderr)
        return codes.CONFIG_EXIT
    if "RANK" not in os.environ:
        if args.world_size is None or args.world_size < 1:
            print("tp: no RANK in the environment: pass --world-size N (>= 1) to spawn local ranks, "
                  "or run under torchrun", file=sys.stderr)
            return codes.CONFIG_EXIT
        from tp.model import ModelConfig

        try:  # refuse before spawning: every rank would load the model only to refuse it
            ModelConfig().check_world_size(args.world_size)
        except ValueError as exc:
            print(f"tp: {exc}", file=sys.stderr)
            return codes.CONFIG_EXIT
        from tp.launch import spawn

        return spawn(world_size=args.world_size, argv=_strip_world_size(argv))
    from tp import config

    try:
        cfg = config.from_env(chunks=args.chunks, reset_every=args.reset_every, backend=args.backend)
        failpoints.arm(cfg.failpoints)
        from tp.model import ModelConfig

        ModelConfig().check_world_size(cfg.world_size)
    except (config.ConfigError, failpoints.FailpointError, ValueError) as exc:
        print(f"tp: {exc}", file=sys.stderr, flush=True)
        return codes.CONFIG_EXIT
    from tp.runtime import Rank

    code = Rank(cfg).main()
    # Leave without interpreter finalization, as the fatal paths do: it restores default signal handlers,
    # so a harness's SIGUSR1 probe arriving during a slow teardown would kill a rank that ended cleanly.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _strip_world_size(argv: list[str]) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--world-size":
            skip = True
        elif not a.startswith("--world-size="):
            out.append(a)
    return out


if __name__ == "__main__":
    sys.exit(main())
