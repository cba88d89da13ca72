"""Hot standbys (docs/resilience.md): a warm standby holds its primary's layers but none of the live
sequences' KV caches, so a switch to it replays the stage's whole recorded history (one prefill: seconds
for hundreds of tokens on a small CPU). The mirror sends the inputs a primary accepted to its standby as
well, in the background, so the standby's cache follows its primary's a few positions behind and a switch
replays only those.

The gateway calls ``feed`` after each stage accepted an input, ``take`` when a standby replaces its
primary (how many positions of the sequence the standby already holds), ``drop`` when a sequence ends.
Decode positions are sent ``batch`` at a time (one forward of a few rows costs about one of a single row on
a small CPU); a prompt is sent at once. Calls to one standby run in order, one at a time; a failed call
leaves the sequence unmirrored on that standby (the switch then replays from where it still is right).

Logic only: the stages are the gateway's ``PipelineStage`` objects.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

log = logging.getLogger("edgeinfer.cluster")

BATCH = 8  # decode positions gathered before one forward to the standby
TIMEOUT = 120.0  # seconds for one mirrored forward (a long prompt's prefill on a slow node)


def head_rows(inputs: list, n: int) -> list:
    """The inputs (tensors of consecutive positions, in order) cut to their first ``n`` positions."""
    kept, have = [], 0
    for x in inputs:
        if have >= n:
            break
        kept.append(x[: n - have])
        have += int(kept[-1].shape[0])
    return kept


@dataclass
class _Mirrored:
    """One sequence on one standby."""

    stage: object  # the standby's PipelineStage
    last: bool  # the standby is the pipeline's last stage: it returns top-1 ids, not hidden states
    synced: int = 0  # positions the standby holds, valid ones only (confirmed, not rolled back since)
    cut: int = 1 << 62  # the lowest rollback point since the forward in flight was sent
    base: int = 0  # position of the first pending row (with none pending: the next one to send)
    pending: list = field(default_factory=list)  # inputs not sent yet, contiguous from ``base``
    busy: bool = False  # a forward to the standby is in flight
    broken: bool = False  # a call failed: the standby's cache is no longer trusted past ``synced``
    gone: bool = False  # dropped or taken: stop, and drop it on the node once idle (``dropping``)
    dropping: bool = False

    def pending_rows(self) -> int:
        return sum(int(x.shape[0]) for x in self.pending)


class StandbyMirror:
    def __init__(self, batch: int = BATCH, timeout: float = TIMEOUT, workers: int = 4):
        self.batch, self.timeout = batch, timeout
        self._cond = threading.Condition()
        self._seqs: dict[tuple[int, str], _Mirrored] = {}
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="standby-mirror")
        self._closed = False
        self.sent_rows = 0  # positions forwarded to standbys (for the benchmark and the tests)

    def feed(self, standby, seq_id: str, x, start_pos: int, last: bool = False) -> None:
        """Stage ``standby``'s primary accepted ``x`` at ``start_pos`` for ``seq_id``: mirror it. A
        ``start_pos`` below what was fed (rejected drafts) rolls the mirror back as the node does."""
        with self._cond:
            if self._closed:
                return
            key = (id(standby), seq_id)
            m = self._seqs.get(key)
            if m is None or m.gone:
                if start_pos != 0:
                    return  # the standby never saw the start of this sequence: nothing to follow
                m = self._seqs[key] = _Mirrored(standby, last)
            if m.broken:
                return
            # positions from start_pos on are rewritten: what the standby holds there is stale now
            m.synced, m.cut = min(m.synced, start_pos), min(m.cut, start_pos)
            end = m.base + m.pending_rows()  # the next position the standby will be sent
            if start_pos > end:  # a gap: an input was not mirrored (cannot happen in order); stop
                m.broken = True
                m.pending.clear()
                return
            if m.pending and start_pos >= m.base:
                m.pending = head_rows(m.pending, start_pos - m.base)
            else:
                m.pending, m.base = [], start_pos
            m.pending.append(x)
            if not m.busy and (m.pending_rows() >= self.batch or m.base == 0):
                self._send_locked(key, m)

    def _send_locked(self, key: tuple[int, str], m: _Mirrored) -> None:
        import torch

        x, pos = torch.cat(m.pending), m.base
        m.pending, m.base, m.busy, m.cut = [], pos + int(x.shape[0]), True, 1 << 62
        self._pool.submit(self._run, key, m, x, pos)

    def _run(self, key: tuple[int, str], m: _Mirrored, x, pos: int) -> None:
        seq_id = key[1]
        ok = False
        try:
            m.stage.forward(seq_id, x, pos, "top1" if m.last else "logits", self.timeout)
            ok = True
        except Exception as exc:  # noqa: BLE001 - a standby that fails is judged by the heartbeat
            log.info("mirroring %s to standby %s failed: %s", seq_id, m.stage.describe(), exc)
        with self._cond:
            m.busy = False
            if ok:
                m.synced = min(pos + int(x.shape[0]), m.cut)
                self.sent_rows += int(x.shape[0])
            else:
                m.broken, m.pending = True, []
            if m.gone:
                self._finish_locked(key, m)
            elif m.pending and m.pending_rows() >= self.batch:
                self._send_locked(key, m)
            self._cond.notify_all()

    def _finish_locked(self, key: tuple[int, str], m: _Mirrored) -> None:
        if self._seqs.get(key) is m:
            del self._seqs[key]
        if m.dropping and (m.synced or m.broken):
            self._pool.submit(self._drop_on_node, m.stage, key[1])

    @staticmethod
    def _drop_on_node(stage, seq_id: str) -> None:
        try:
            stage.drop(seq_id)
        except Exception as exc:  # noqa: BLE001 - a dead standby holds nothing anyway
            log.info("dropping %s on standby %s failed: %s", seq_id, stage.describe(), exc)

    def take(self, standby, seq_id: str, wait: float = 30.0) -> int:
        """``standby`` replaces its primary: the positions of ``seq_id`` it holds (0: replay everything).
        Pending rows are not sent (the caller replays them with the rest); a forward in flight is waited
        for (the node would run it before the replay anyway), at most ``wait`` seconds. The mirror stops
        following the sequence there: the stage is a primary now."""
        key = (id(standby), seq_id)
        with self._cond:
            m = self._seqs.get(key)
            if m is None:
                return 0
            m.pending, m.gone = [], True
            if not self._cond.wait_for(lambda: not m.busy, timeout=wait):
                log.warning(
                    "standby %s is still busy mirroring %s: replaying everything", standby.name, seq_id
                )
                return 0
            self._seqs.pop(key, None)
            return 0 if m.broken else m.synced

    def drop(self, seq_id: str) -> None:
        """The sequence ended: stop mirroring it and drop it on every standby that holds it."""
        with self._cond:
            for key, m in list(self._seqs.items()):
                if key[1] != seq_id:
                    continue
                m.pending, m.gone, m.dropping = [], True, True
                if not m.busy:
                    self._finish_locked(key, m)

    def synced(self, standby, seq_id: str) -> int:
        """Positions of ``seq_id`` the standby holds now (confirmed)."""
        with self._cond:
            m = self._seqs.get((id(standby), seq_id))
            return 0 if m is None or m.broken else m.synced

    def idle(self, timeout: float = 30.0) -> bool:
        """Wait until no mirrored forward is in flight (tests, benchmarks)."""
        with self._cond:
            return self._cond.wait_for(lambda: not any(m.busy for m in self._seqs.values()), timeout)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._seqs.clear()
        self._pool.shutdown(wait=False, cancel_futures=True)
