"""Active/standby replicas: one holds a coordination.k8s.io Lease and acts; the others watch,
wait and take over when the holder stops renewing it.

A Lease rather than Kopf peering: peering pauses only Kopf's own handlers (not this
operator's resync and tuning tasks) and treats two replicas of the same priority as a
conflict, not as active and standby. A Lease is the Kubernetes convention (client-go leader
election, kube-controller-manager), gives a bounded take-over time (the lease duration plus
one retry period) and compare-and-swap on resourceVersion means one holder at a time. A
holder that cannot renew within the duration exits, so it never acts on a lease it lost.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import socket
from collections.abc import Awaitable, Callable

from lightkube import ApiError, AsyncClient
from lightkube.models.coordination_v1 import LeaseSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.coordination_v1 import Lease

log = logging.getLogger(__name__)

ENABLED = os.environ.get("SPECDECODE_LEADER_ELECTION", "") in ("1", "true", "True")
LEASE_NAME = os.environ.get("SPECDECODE_LEASE_NAME", "specdecode-operator")
LEASE_NAMESPACE = os.environ.get("SPECDECODE_LEASE_NAMESPACE", "default")
DURATION = int(os.environ.get("SPECDECODE_LEASE_SECONDS", "15"))
RETRY = float(os.environ.get("SPECDECODE_LEASE_RETRY_SECONDS", "2"))


def identity() -> str:
    return os.environ.get("SPECDECODE_POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def expired(spec: LeaseSpec | None, now: dt.datetime) -> bool:
    if spec is None or not spec.holderIdentity or spec.renewTime is None:
        return True
    renew = spec.renewTime if spec.renewTime.tzinfo else spec.renewTime.replace(tzinfo=dt.UTC)
    return now > renew + dt.timedelta(seconds=spec.leaseDurationSeconds or DURATION)


class Elector:
    def __init__(self, client: AsyncClient, me: str | None = None) -> None:
        self.client = client
        self.me = me or identity()

    async def _try(self) -> bool:
        """One attempt to acquire or renew; True while this replica holds the lease."""
        now = _now()
        try:
            lease = await self.client.get(Lease, LEASE_NAME, namespace=LEASE_NAMESPACE)
        except ApiError as e:
            if e.status.code != 404:
                raise
            await self.client.create(Lease(
                metadata=ObjectMeta(name=LEASE_NAME, namespace=LEASE_NAMESPACE),
                spec=LeaseSpec(holderIdentity=self.me, leaseDurationSeconds=DURATION,
                               acquireTime=now, renewTime=now, leaseTransitions=0)))
            return True
        spec = lease.spec or LeaseSpec()
        if spec.holderIdentity != self.me:
            if not expired(spec, now):
                return False
            log.info("lease %s/%s of %s expired: taking over", LEASE_NAMESPACE, LEASE_NAME,
                     spec.holderIdentity)
            spec.leaseTransitions = (spec.leaseTransitions or 0) + 1
            spec.acquireTime = now
        spec.holderIdentity, spec.renewTime, spec.leaseDurationSeconds = self.me, now, DURATION
        lease.spec = spec
        # replace() sends metadata.resourceVersion: a concurrent writer makes this a 409.
        await self.client.replace(lease)
        return True

    async def run(self, on_elected: Callable[[], Awaitable[None]]) -> None:
        """Wait to be elected, call ``on_elected``, then renew for ever; exit the process
        when the lease cannot be renewed in time (another replica may hold it by then)."""
        while True:
            try:
                if await self._try():
                    break
            except ApiError as e:
                if e.status.code != 409:
                    log.warning("leader election: %s", e.status.message)
            except Exception as e:  # the API is away: keep waiting
                log.warning("leader election: %s", e)
            await asyncio.sleep(RETRY)
        log.info("leader election: %s holds lease %s/%s", self.me, LEASE_NAMESPACE, LEASE_NAME)
        await on_elected()
        last = asyncio.get_running_loop().time()
        while True:
            await asyncio.sleep(RETRY)
            try:
                if await self._try():
                    last = asyncio.get_running_loop().time()
                    continue
                log.error("leader election: lease %s/%s taken by another replica: exiting",
                          LEASE_NAMESPACE, LEASE_NAME)
                os._exit(1)
            except Exception as e:
                log.warning("leader election: renewal failed: %s", e)
            # Stop before the lease can expire for the others (a margin of one retry).
            if asyncio.get_running_loop().time() - last > DURATION - RETRY:
                log.error("leader election: could not renew lease for %.0f s: exiting",
                          asyncio.get_running_loop().time() - last)
                os._exit(1)
