"""A coherent-L1 agent in a process of its own, for the process-fault tests (SIGKILL, SIGSTOP).

Run as `python -m tests.integration.fault_agent REDIS_URL POSTGRES_DSN NAMESPACE SCHEMA
AGENT_ID KEY VALUE_JSON --owner-lease-s 1.0`. The agent takes ownership of KEY with `set` (a
write at tier 0: the entry is Modified, its value only in this process), prints
`owns <version> <state>` and obeys commands, one per line on stdin:

- `read`: read KEY through its L1; prints `read <JSON [value, version] or null>`, or
  `read-failed <error type>: <message>` if the read raised;
- `close` (or end of input): close the tier, which writes the entry back unless the home
  fences it, print `fenced <JSON list of [key, version, value]>` and
  `stats <JSON of statistics()>`, and exit 0.

The test that starts it decides its fate in between: SIGKILL (it never writes back), or
SIGSTOP then SIGCONT (its lease lapses while it is paused, and its late write-back must be
fenced). Nothing here may touch the key after `set` except what the tier does by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import sys

from sagemem.coherence.bus import CoherenceBus
from sagemem.errors import SageMemError
from sagemem.tiers.l1_coherent import CoherentL1Tier
from sagemem.tiers.l3 import L3Tier
from sagemem.values import JSONValue

OWNS: str = "owns"
FENCED: str = "fenced"
STATS: str = "stats"
CLOSE: str = "close"
READ: str = "read"
READ_FAILED: str = "read-failed"


def _say(*words: str) -> None:
    print(*words, flush=True)


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    """The command line described in the module docstring."""
    parser = argparse.ArgumentParser(prog="fault_agent", description=__doc__)
    parser.add_argument("redis_url")
    parser.add_argument("postgres_dsn")
    parser.add_argument("namespace")
    parser.add_argument("schema")
    parser.add_argument("agent_id")
    parser.add_argument("key")
    parser.add_argument("value_json", help="the value to `set`, as JSON")
    parser.add_argument("--owner-lease-s", type=float, default=1.0)
    parser.add_argument("--holder-ttl-s", type=float, default=2.0)
    parser.add_argument("--operation-timeout-s", type=float, default=10.0)
    return parser.parse_args(argv)


async def run(arguments: argparse.Namespace) -> int:
    """Own the key, report it, wait for `close`, report what was fenced."""
    value: JSONValue = json.loads(arguments.value_json)
    home = L3Tier(
        dsn=arguments.postgres_dsn, namespace=arguments.namespace, schema=arguments.schema
    )
    async with CoherenceBus(url=arguments.redis_url, namespace=arguments.namespace) as bus:
        l1 = CoherentL1Tier(
            agent_id=arguments.agent_id,
            bus=bus,
            home=home,
            owner_lease_s=arguments.owner_lease_s,
            holder_ttl_s=arguments.holder_ttl_s,
            operation_timeout_s=arguments.operation_timeout_s,
        )
        try:
            await l1.start()
            version = await l1.set(arguments.key, value)
            _say(OWNS, str(version), l1.get_state(arguments.key).name)
            while (command := (await asyncio.to_thread(sys.stdin.readline)).strip()) not in (
                CLOSE,
                "",
            ):
                if command != READ:
                    _say("error", f"unexpected command {command!r}")
                    return 2
                try:
                    entry = await l1.read(arguments.key)
                except SageMemError as error:
                    _say(READ_FAILED, f"{type(error).__name__}: {error}")
                    continue
                _say(READ, json.dumps(None if entry is None else [entry.value, entry.version]))
        finally:
            await l1.aclose()
            await home.aclose()
        fenced = [[write.key, write.version, write.value] for write in l1.fenced_writes()]
        _say(FENCED, json.dumps(fenced))
        _say(STATS, json.dumps(dataclasses.asdict(l1.statistics())))
    return 0


def main() -> None:
    """Entry point of `python -m tests.integration.fault_agent`."""
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(relativeCreated)d %(name)s %(message)s"
    )
    sys.exit(asyncio.run(run(parse_arguments(sys.argv[1:]))))


if __name__ == "__main__":
    main()
