"""``python -m tp``: run one rank (under torchrun or the harness) or spawn N.

With ``RANK`` in the environment this process is one rank. Without it,
``--world-size N`` spawns N local ranks on gloo/CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable

TUNABLE_ENV = {
    "TP_HEARTBEAT_S": ("0.05", "watchdog heartbeat and poll interval, seconds"),
    "TP_PEER_TIMEOUT_S": ("2.0", "ceiling of the adaptive peer timeout, seconds"),
    "TP_PEER_TIMEOUT_MIN_S": ("0.5", "floor of the adaptive peer timeout, seconds"),
    "TP_PROGRESS_TIMEOUT_S": ("60", "busy without progress this long is fatal, seconds"),
    "TP_HANDSHAKE_TIMEOUT_S": ("10", "init handshake deadline, seconds"),
    "TP_STARTUP_TIMEOUT_S": ("30", "start-up deadline: store connect, store reads and the handshake, seconds"),
    "TP_DIGEST_EVERY": ("1", "digest exchange every N chunks"),
}
"""``--list-env`` (CONTRACT §1): the knobs a harness may set to fit its deadlines; it sets no other."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tp", description=__doc__)
    p.add_argument("--world-size", type=int, default=None, help="spawn this many local ranks (no RANK in env)")
    p.add_argument("--chunks", type=int, default=8, help="chunks rank 0 drives before SHUTDOWN (default 8)")
    p.add_argument("--reset-every", type=int, default=4, help="hard cut (cache reset) every N chunks (default 4)")
    p.add_argument("--backend", choices=("gloo", "nccl"), default="gloo", help="gloo on CPU, nccl on GPUs")
    p.add_argument("--output", default=None, metavar="PATH",
                   help="the driver saves the delivered frames here (a torch file) for comparing runs")
    p.add_argument("--list-failpoints", action="store_true", help="print every failpoint site as JSON lines")
    p.add_argument("--list-codes", action="store_true", help="print every fatal code as JSON lines")
    p.add_argument("--list-guardrails", action="store_true", help="print every guardrail as JSON lines")
    p.add_argument("--list-env", action="store_true", help="print the TP_* knobs a harness may tune as JSON lines")
    p.add_argument("--check-failpoints", action="append", default=[], metavar="SPEC",
                   help="check a TP_FAILPOINTS value without running; one JSON verdict line (repeatable)")
    p.add_argument("--check-guardrails", action="append", default=[], metavar="SPEC",
                   help="check a TP_GUARDRAILS value without running (repeatable)")
    p.add_argument("--check-world-size", action="append", default=[], type=int, metavar="N",
                   help="check that the model can be split over N ranks (repeatable)")
    p.add_argument("--check-backend", action="append", default=[], choices=("gloo", "nccl"),
                   help="check that this machine can run the backend (nccl: CUDA and NCCL present)")
    p.add_argument("--check-env", action="append", default=[], metavar="JSON",
                   help="check TP_* values of a JSON object of env variables, as a rank would read them")
    return p


def _checks(args: argparse.Namespace) -> int:
    """One JSON line per ``--check-*`` value: ``{"check", "value", "ok", "error"}``; exit 2 if any fails."""
    from tp import failpoints, guardrails

    def world_size(n: int) -> None:
        if n < 1:
            raise ValueError(f"world size {n} must be >= 1")
        from tp.model_config import ModelConfig

        ModelConfig().check_world_size(n)

    checks = [("failpoints", v, lambda v: failpoints.parse(v)) for v in args.check_failpoints]
    checks += [("guardrails", v, lambda v: guardrails.parse(v)) for v in args.check_guardrails]
    checks += [("world_size", v, world_size) for v in args.check_world_size]
    checks += [("backend", v, _check_backend) for v in args.check_backend]
    checks += [("env", v, _check_env) for v in args.check_env]
    return answer_checks(checks)


def answer_checks(checks: list[tuple[str, object, Callable[[object], object]]]) -> int:
    """Run each ``(kind, value, check)``: one JSON verdict line each (CONTRACT §1); 2 if any raised ValueError."""
    failed = 0
    for kind, value, check in checks:
        try:
            check(value)
            error = None
        except ValueError as exc:
            error, failed = str(exc), failed + 1
        print(json.dumps({"check": kind, "value": value, "ok": error is None, "error": error}))
    from tp import codes

    return codes.CONFIG_EXIT if failed else 0


def _check_env(text: str) -> None:
    """Read the TP_* variables of ``text`` (a JSON object) exactly as a rank's config would."""
    from tp import config

    try:
        env = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"not a JSON object of env variables: {exc}") from None
    if not isinstance(env, dict):
        raise ValueError("not a JSON object of env variables")
    # torchrun's variables are the launcher's; stand-ins let every TP_* value be read.
    base = {"RANK": "0", "WORLD_SIZE": "1024", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}
    config.from_env({**base, **{k: str(v) for k, v in env.items() if k.startswith("TP_")}})


def _check_backend(name: str) -> None:
    if name != "nccl":
        return
    import torch
    import torch.distributed as dist

    if not (torch.cuda.is_available() and dist.is_nccl_available()):
        raise ValueError("backend nccl needs CUDA GPUs and a torch build with NCCL; this machine has "
                         f"cuda={torch.cuda.is_available()} nccl={dist.is_nccl_available()}: use --backend gloo")


def _listed(args: argparse.Namespace) -> bool:
    """Answer ``--list-failpoints``, ``--list-codes``, ``--list-guardrails`` or ``--list-env`` (JSON lines); False if
    none asked."""
    from tp import codes, failpoints, guardrails

    if args.list_failpoints:
        for site in failpoints.SITES:
            print(json.dumps(failpoints.declared(site, reset_every=args.reset_every)))
    elif args.list_codes:
        for c in codes.CODES.values():
            print(json.dumps({"code": c.name, "exit": c.exit, "fm": c.fm, "description": c.description}))
    elif args.list_guardrails:
        for name, description in guardrails.NAMES.items():
            print(json.dumps({"guardrail": name, "description": description}))
    elif args.list_env:
        for name, (default, description) in TUNABLE_ENV.items():
            print(json.dumps({"env": name, "default": default, "description": description}))
    else:
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = _parser().parse_args(argv)
    from tp import codes, failpoints

    if _listed(args):
        return 0
    if any((args.check_failpoints, args.check_guardrails, args.check_world_size, args.check_backend,
            args.check_env)):
        return _checks(args)
    if args.chunks < 1 or args.reset_every < 1:
        print("tp: --chunks and --reset-every must be >= 1", file=sys.stderr)
        return codes.CONFIG_EXIT
    if "RANK" not in os.environ:
        if args.world_size is None or args.world_size < 1:
            print("tp: no RANK in the environment: pass --world-size N (>= 1) to spawn local ranks, "
                  "or run under torchrun", file=sys.stderr)
            return codes.CONFIG_EXIT
        from tp.model_config import ModelConfig

        try:  # refuse before spawning: every rank would load the model only to refuse it
            ModelConfig().check_world_size(args.world_size)
        except ValueError as exc:
            print(f"tp: --world-size: {exc}", file=sys.stderr)
            return codes.CONFIG_EXIT
        from tp.launch import spawn

        return spawn(world_size=args.world_size, argv=_strip_world_size(argv))
    from tp import config

    try:
        cfg = config.from_env(chunks=args.chunks, reset_every=args.reset_every, backend=args.backend,
                              output=args.output)
        failpoints.install(cfg.failpoints)
        from tp.model_config import ModelConfig

        ModelConfig().check_world_size(cfg.world_size)
        from tp.runtime import rank_device

        rank_device(cfg)  # no CUDA, or too few GPUs for NCCL: refused here, before the store or any peer
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
