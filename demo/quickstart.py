"""The design note's quickstart, runnable: one agent, three tiers, on real Redis and Postgres.

`uv run python -m demo.quickstart` uses `SAGEMEM_REDIS_URL` / `SAGEMEM_POSTGRES_DSN` when set,
else starts (or reuses) the embedded servers, then walks through a write at L3, a read that
falls through and promotes, and an L1 hit, printing what each tier did.
"""

from __future__ import annotations

import asyncio
import sys
import time

from sagemem.hierarchy import MemoryHierarchy
from sagemem.services import redacted_url, resolve_postgres_dsn, resolve_redis_url
from sagemem.tiers.l1 import L1Tier
from sagemem.tiers.l2 import L2Tier
from sagemem.tiers.l3 import L3Tier


def _say(message: str) -> None:
    print(message, flush=True)


async def run() -> int:
    """Run the walkthrough; return the process exit status."""
    started = time.perf_counter()
    _say("sagemem quickstart: finding or starting Redis and Postgres ...")
    redis_url = await asyncio.to_thread(resolve_redis_url, None)
    postgres_dsn = await asyncio.to_thread(resolve_postgres_dsn, None)
    _say(f"  Redis:    {redacted_url(redis_url)}")
    _say(f"  Postgres: {redacted_url(postgres_dsn)}")

    l1 = L1Tier(capacity=128)
    l2 = L2Tier(url=redis_url, namespace="quickstart")
    l3 = L3Tier(dsn=postgres_dsn, namespace="quickstart")
    await l2.connect()
    await l3.connect()
    try:
        h = MemoryHierarchy(tiers=[l1, l2, l3])
        await h.delete("fact:pi")

        version = await h.set("fact:pi", 3.14159, tier_index=2)
        _say(f"\nwrote fact:pi = 3.14159 at L3 (Postgres), home version {version}")

        value = await h.get("fact:pi")
        _say(f"first read:  {value!r}  (L1 miss -> L2 miss -> L3 hit -> promoted to L1 and L2)")
        value = await h.get("fact:pi")
        _say(f"second read: {value!r}  (L1 hit)")

        _say("\nper-tier statistics:")
        for tier in h.statistics().tiers:
            median = (
                "-"
                if tier.read_latency_us_median is None
                else (f"{tier.read_latency_us_median:.1f} us")
            )
            _say(
                f"  {tier.name}: hits={tier.hits} misses={tier.misses} writes={tier.writes} "
                f"median read latency={median}"
            )
        if value != 3.14159:
            _say(f"unexpected value read back: {value!r}")
            return 1
    finally:
        await l3.aclose()
        await l2.aclose()
    _say(f"\ndone in {time.perf_counter() - started:.2f} s")
    return 0


def main() -> None:
    """Console entry: run the quickstart and exit with its status."""
    sys.exit(asyncio.run(run()))


if __name__ == "__main__":
    main()
