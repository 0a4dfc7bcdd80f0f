"""The stage cache and its lease: a stage's cache key, the FINISHED run that has it, and the lease
that lets one stage key be run by at most one live pipeline run at a time.

Concurrent cold pipelines of one symbol (three DAG runs at once) would otherwise each train the
same model; with the lease one trains and the others adopt its run (``tradeflow.pipeline.run``'s
``_run_or_reuse`` takes it for the stages ``stages.STAGES`` marks ``leased``). Tags on the claiming pipeline run are the only
shared state, so it works on any MLflow store.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time

from mlflow.tracking import MlflowClient

from tradeflow import settings
from tradeflow.errors import StepError
from tradeflow.runs.filters import filter_value
from tradeflow.runs.records import Tag, find_by_tags

log = logging.getLogger(__name__)

def cache_key(entry_point: str, params: dict[str, str], *, code: str, data_digest: str, extra: dict | None = None) -> str:
    """What makes two runs of a stage the same: entry point, params, code version, data digest."""
    payload = json.dumps({"entry_point": entry_point, "params": params, "code": code,
                          "data": data_digest, **(extra or {})}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def find_cached(client: MlflowClient, experiment_id: str, key: str) -> str | None:
    """The FINISHED run of this cache key, if any (the stage is then reused, not re-run)."""
    runs = find_by_tags(client, experiment_id, {Tag.CACHE_KEY: key}, status="FINISHED", max_results=1)
    return runs[0].info.run_id if runs else None


#: The stage-cache lease, as tags of the claiming pipeline run (see ``StageLease``).


class StageLeaseTimeout(StepError):
    """Waited ``TRADEFLOW_LEASE_TIMEOUT_S`` for another pipeline's run of the same stage."""


class StageLease:
    """One stage's cache key, claimed by at most one live pipeline run at a time, so concurrent cold
    runs (three DAG runs of one symbol) train once and the others adopt the result.

    MLflow has no compare-and-set, so the claim is ordered: every claimer tags its own pipeline run
    in one write (key, claim time, heartbeat) and reads the live claims of the key.

    - **Uncontended (the usual case), no wait**: a claimer that sees no other live claim, marks its
      claim held, and again sees no other live claim (nor a result finished meanwhile), holds at
      once. Each read follows the reader's own write, so of two claims the later one to become
      visible always sees the earlier: two claimers never both see themselves alone, and a rival
      that was not there at the second read writes its claim after the held mark, so its first
      read sees the mark and it waits.
    - **Contended**: claimers that saw a rival wait ``settle_s`` (longer than the gap between a
      claim's time and its tags being visible, and than clock skew between workers); then a live
      claim marked held comes first, else the smallest (claim time, run id); every claimer
      computes the same order, and one holds only after finding itself first twice, ``settle_s``
      apart (then it marks its claim held).

    The holder heartbeats while its stage runs; the others poll for the FINISHED cached run and
    adopt it. A holder whose pipeline run ended, or whose heartbeat is older than ``stale_s`` (its
    worker was killed), no longer counts: the next in order runs the stage. Past ``timeout_s`` a
    waiter fails with ``StageLeaseTimeout`` naming the holder.
    """

    def __init__(self, client: MlflowClient, parent, stage: str, key: str, *, settle_s: float = 2.0,
                 poll_s: float = 2.0, heartbeat_s: float = 10.0, stale_s: float = 60.0,
                 timeout_s: float | None = None) -> None:
        self.client, self.stage, self.key = client, stage, key
        self.run_id = parent.info.run_id
        self.experiment_id = parent.info.experiment_id
        self.settle_s, self.poll_s, self.heartbeat_s, self.stale_s = settle_s, poll_s, heartbeat_s, stale_s
        self.timeout_s = timeout_s if timeout_s is not None else settings.current().lease_timeout_s
        self.tags = {name.format(stage=stage)
                     for name in (Tag.LEASE, Tag.LEASE_CLAIMED_AT, Tag.LEASE_HEARTBEAT, Tag.LEASE_HELD)}
        self.claimed_at = 0.0

    def _beat(self, client: MlflowClient | None = None) -> None:
        (client or self.client).set_tag(self.run_id, Tag.LEASE_HEARTBEAT.format(stage=self.stage), f"{time.time():.3f}")

    def _live_claims(self) -> list[tuple[bool, float, str]]:
        """Live claims of the key, in holding order: (not marked held, claim time, run id)."""
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{Tag.LEASE.format(stage=self.stage)}` = {filter_value(self.key)} "
                          "and attributes.status = 'RUNNING'")
        now = time.time()
        claims = []
        for run in runs:
            tags = run.data.tags
            try:
                at = float(tags[Tag.LEASE_CLAIMED_AT.format(stage=self.stage)])
                beat = float(tags.get(Tag.LEASE_HEARTBEAT.format(stage=self.stage), at))
            except (KeyError, ValueError):
                continue
            if run.info.run_id == self.run_id or now - beat <= self.stale_s:
                held = tags.get(Tag.LEASE_HELD.format(stage=self.stage)) == self.key
                claims.append((not held, at, run.info.run_id))
        return sorted(claims)

    def acquire_or_adopt(self) -> str | None:
        """Block until this run holds the lease (None: run the stage) or another run's result is
        there (its run id: adopt it)."""
        from mlflow.entities import RunTag

        self.claimed_at = time.time()
        stamp = f"{self.claimed_at:.6f}"
        self.client.log_batch(self.run_id, tags=[  # one write: the claim appears whole or not at all
            RunTag(Tag.LEASE.format(stage=self.stage), self.key), RunTag(Tag.LEASE_CLAIMED_AT.format(stage=self.stage), stamp),
            RunTag(Tag.LEASE_HEARTBEAT.format(stage=self.stage), stamp)])
        if self._alone():
            self._mark_held()
            if self._alone():  # still alone after the mark: any later claimer sees the mark
                cached = find_cached(self.client, self.experiment_id, self.key)
                if not cached:
                    return None
                self.release()  # a rival finished and released between the caller's look and our claim
                log.info("stage %s: adopting run %s, finished just before this claim", self.stage, cached)
                return cached
        else:
            time.sleep(self.settle_s)
        deadline = time.monotonic() + self.timeout_s
        holder = None
        confirmed = False
        while True:
            cached = find_cached(self.client, self.experiment_id, self.key)
            if cached:
                self.release()
                log.info("stage %s: adopting run %s, finished by pipeline run %s while this one waited",
                         self.stage, cached, holder or "another pipeline")
                return cached
            claims = self._live_claims()
            first = claims[0][2] if claims else self.run_id
            if first == self.run_id:
                if not confirmed:  # first twice, settle_s apart: a slow claim had time to appear
                    confirmed = True
                    time.sleep(self.settle_s)
                    continue
                if holder:
                    log.warning("stage %s: pipeline run %s, which held the lease, ended or stopped heartbeating"
                                " without a result; running the stage here", self.stage, holder)
                self._mark_held()
                return None
            confirmed = False
            if first != holder:
                log.info("stage %s: pipeline run %s is running it with the same cache key; waiting for its result"
                         " (up to %.0f s)", self.stage, first, self.timeout_s)
                holder = first
            if time.monotonic() >= deadline:
                self.release()
                raise StageLeaseTimeout(f"stage {self.stage}: waited {self.timeout_s:.0f} s for pipeline run {holder}, "
                                        "which runs it with the same cache key and is still running "
                                        "(TRADEFLOW_LEASE_TIMEOUT_S); giving up")
            self._beat()
            time.sleep(self.poll_s)

    def _alone(self) -> bool:
        """No live claim of the key but this run's (and no FINISHED result yet: checked by the caller)."""
        return [claim[2] for claim in self._live_claims()] == [self.run_id]

    def _mark_held(self) -> None:
        self.client.set_tag(self.run_id, Tag.LEASE_HELD.format(stage=self.stage), self.key)

    def heartbeat(self):
        """Context manager: keep the held lease's heartbeat fresh while the stage runs."""
        lease = self

        class _Beating:
            def __enter__(self_inner) -> None:
                self_inner.stop = threading.Event()
                client = MlflowClient()

                def loop() -> None:
                    while not self_inner.stop.wait(lease.heartbeat_s):
                        try:
                            lease._beat(client)
                        except Exception as exc:  # noqa: BLE001 - a missed beat is logged, not fatal
                            log.warning("stage %s: lease heartbeat failed: %s", lease.stage, exc)

                self_inner.thread = threading.Thread(target=loop, daemon=True, name=f"lease-{lease.stage}")
                self_inner.thread.start()

            def __exit__(self_inner, *exc: object) -> None:
                self_inner.stop.set()
                self_inner.thread.join(timeout=5)

        return _Beating()

    def release(self) -> None:
        for tag in self.tags:
            try:
                self.client.delete_tag(self.run_id, tag)
            except Exception:  # noqa: BLE001 - absent already; the run's end releases it anyway
                pass
