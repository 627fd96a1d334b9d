"""Active/standby replicas: one holds a coordination.k8s.io Lease and acts; the others watch,
wait and take over when the holder stops renewing it.

A Lease rather than Kopf peering: peering pauses only Kopf's own handlers (not this
operator's resync and tuning tasks) and treats two replicas of the same priority as a
conflict, not as active and standby. A Lease is the Kubernetes convention (client-go leader
election, kube-controller-manager), gives a bounded take-over time (the lease duration plus
one retry period) and compare-and-swap on resourceVersion means one holder at a time. A
holder that cannot renew within the duration exits, so it never acts on a lease it lost.

Its settings (``config.LeaderElection``) come from the operator's configuration.
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

from .config import LeaderElection

log = logging.getLogger(__name__)


def identity(configured: str = "") -> str:
    return configured or f"{socket.gethostname()}-{os.getpid()}"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def expired(spec: LeaseSpec | None, now: dt.datetime, default_seconds: int = 15) -> bool:
    if spec is None or not spec.holderIdentity or spec.renewTime is None:
        return True
    renew = spec.renewTime if spec.renewTime.tzinfo else spec.renewTime.replace(tzinfo=dt.UTC)
    return now > renew + dt.timedelta(seconds=spec.leaseDurationSeconds or default_seconds)


class Elector:
    def __init__(self, client: AsyncClient, settings: LeaderElection,
                 me: str | None = None) -> None:
        self.client = client
        self.settings = settings
        self.me = me or identity(settings.identity)

    async def _try(self) -> bool:
        """One attempt to acquire or renew; True while this replica holds the lease."""
        now, st = _now(), self.settings
        try:
            lease = await self.client.get(Lease, st.lease_name, namespace=st.lease_namespace)
        except ApiError as e:
            if e.status.code != 404:
                raise
            await self.client.create(Lease(
                metadata=ObjectMeta(name=st.lease_name, namespace=st.lease_namespace),
                spec=LeaseSpec(holderIdentity=self.me, leaseDurationSeconds=st.lease_seconds,
                               acquireTime=now, renewTime=now, leaseTransitions=0)))
            return True
        spec = lease.spec or LeaseSpec()
        if spec.holderIdentity != self.me:
            if not expired(spec, now, st.lease_seconds):
                return False
            log.info("lease %s/%s of %s expired: taking over", st.lease_namespace,
                     st.lease_name, spec.holderIdentity)
            spec.leaseTransitions = (spec.leaseTransitions or 0) + 1
            spec.acquireTime = now
        spec.holderIdentity, spec.renewTime, spec.leaseDurationSeconds = \
            self.me, now, st.lease_seconds
        lease.spec = spec
        # replace() sends metadata.resourceVersion: a concurrent writer makes this a 409.
        await self.client.replace(lease)
        return True

    async def run(self, on_elected: Callable[[], Awaitable[None]]) -> None:
        """Wait to be elected, call ``on_elected``, then renew for ever; exit the process
        when the lease cannot be renewed in time (another replica may hold it by then)."""
        st = self.settings
        while True:
            try:
                if await self._try():
                    break
            except ApiError as e:
                if e.status.code != 409:
                    log.warning("leader election: %s", e.status.message)
            except Exception as e:  # the API is away: keep waiting
                log.warning("leader election: %s", e)
            await asyncio.sleep(st.retry_seconds)
        log.info("leader election: %s holds lease %s/%s", self.me, st.lease_namespace,
                 st.lease_name)
        await on_elected()
        loop = asyncio.get_running_loop()
        last = loop.time()
        while True:
            await asyncio.sleep(st.retry_seconds)
            try:
                if await self._try():
                    last = loop.time()
                    continue
                log.error("leader election: lease %s/%s taken by another replica: exiting",
                          st.lease_namespace, st.lease_name)
                os._exit(1)
            except Exception as e:
                log.warning("leader election: renewal failed: %s", e)
            # Stop before the lease can expire for the others (a margin of one retry).
            if loop.time() - last > st.lease_seconds - st.retry_seconds:
                log.error("leader election: could not renew lease for %.0f s: exiting",
                          loop.time() - last)
                os._exit(1)
