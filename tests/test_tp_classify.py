"""How a rank names an exception that escaped its TP loop (``Rank._classify``).

The gloo messages are verbatim from real runs (FM-14: a worker SIGKILLed mid-all_reduce): which of the
two the survivor gets depends on whether the dead peer's socket sent FIN or RST, so both must mean
"peer lost".
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch.distributed as dist

from tp import config
from tp.crash import Fatal
from tp.driver import Driver
from tp.runtime import Rank

GLOO_CLOSED = ("[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:553] Connection closed by peer "
               "[127.0.0.1]:37607. This is typically caused by a remote worker crashing. Check the logs of the "
               "remote worker before reporting an error. GLHF!")
GLOO_RESET = ("[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:537] Read error [127.0.0.1]:13715: "
              "Connection reset by peer. This is typically caused by a remote worker hanging or bugs in the "
              "application. Check the logs of the remote worker before reporting an error. GLHF!")


def _rank(store: dist.Store | None = None) -> Rank:
    rank = Rank(config.from_env({"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}))
    rank.store = store
    return rank


@pytest.mark.parametrize("message", [GLOO_CLOSED, GLOO_RESET], ids=["closed", "reset"])
def test_both_messages_gloo_gives_for_a_vanished_peer_mean_peer_lost(message: str) -> None:
    fatal = _rank()._classify(RuntimeError(message))
    assert fatal.code == "PEER_LOST" and "is gone: the collective failed with RuntimeError" in fatal.detail


def test_a_published_abort_names_the_cause_instead() -> None:
    store = dist.HashStore()
    store.set("tp/abort", json.dumps({"code": "META_UNSERIALIZABLE", "fm": "FM-01", "rank": 1, "chunk": 2,
                                      "call_id": 9, "detail": "meta['callback']: function is not encodable"}))
    fatal = _rank(store)._classify(RuntimeError(GLOO_CLOSED))
    assert (fatal.code, fatal.cause_rank, fatal.fm) == ("PEER_ABORT", 1, "FM-01")


@pytest.mark.parametrize(("exc", "code"), [
    (RuntimeError("Invalid scalar type"), "COLLECTIVE_ERROR"),
    (ValueError("something else"), "INTERNAL_ERROR"),
])
def test_other_errors_are_a_collective_error_or_a_bug(exc: Exception, code: str) -> None:
    assert _rank()._classify(exc).code == code


class _SentHeaderThenFailed:
    """A transport whose send fails after the header went out."""

    header_sent = True

    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    def send(self, *_args):
        raise self.exc


def _driver_send(exc: Exception) -> None:
    cfg = config.from_env({"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"})
    driver = Driver(cfg=cfg, transport=_SentHeaderThenFailed(exc), runner=None, rules=None, progress=None, stop=None)
    driver._send(SimpleNamespace(call_id=9), {}, {}, None)


def test_a_peer_lost_mid_envelope_is_named_by_the_classifier_not_blamed_on_the_envelope() -> None:
    # At world size 4 a worker refusing the plan died while rank 0 broadcast its tensors: rank 0 called it its
    # own POST_HEADER_ERROR instead of following that worker's abort (FM-03/worker failed).
    with pytest.raises(RuntimeError, match="Connection closed by peer"):
        _driver_send(RuntimeError(GLOO_CLOSED))
    with pytest.raises(Fatal) as refused:
        _driver_send(RuntimeError("Invalid scalar type"))  # the backend refusing this envelope (FM-02/poison)
    assert refused.value.code == "POST_HEADER_ERROR" and "call_id 9: RuntimeError: Invalid scalar type" in refused.value.detail
