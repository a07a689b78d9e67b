"""A rank for lifetime tests: writes its pid, then blocks, or leaves a grandchild behind and exits.

``ORPHAN_DIR`` gets ``{pid}.pid`` once the rank runs (written by rename: the file appearing is the event).
``ORPHAN_MODE=block``: wait forever. ``ORPHAN_MODE=leave``: start ``sleep`` in a session of its own, write
its pid to ``{pid}.child``, exit 0.
"""

import os
import signal
import subprocess
from pathlib import Path


def _publish(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def main() -> None:
    where = Path(os.environ["ORPHAN_DIR"])
    if os.environ.get("ORPHAN_MODE") == "leave":
        child = subprocess.Popen(["sleep", "600"], start_new_session=True)
        _publish(where / f"{os.getpid()}.child", str(child.pid))
        return
    _publish(where / f"{os.getpid()}.pid", str(os.getpid()))
    while True:
        signal.pause()


if __name__ == "__main__":
    main()
