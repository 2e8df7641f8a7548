"""Fixtures for integration tests: one set of real servers per session, fresh names per test.

`service_endpoints` uses the external servers named by `SAGEMEM_REDIS_URL` and
`SAGEMEM_POSTGRES_DSN` when both are set (and leaves them alone); otherwise it starts a fresh
pair of embedded servers in a runtime directory private to this session (a user's own
`sagemem services up` servers are never touched) and stops them at the end, verifying that no
server process is left. If the servers cannot start, the fixture raises: tests fail, never skip.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor

import asyncpg
import pytest

from sagemem.redis_topology import namespace_node_url
from sagemem.services import (
    POSTGRES_DSN_ENV,
    REDIS_URL_ENV,
    EmbeddedServices,
    ServiceEndpoints,
    create_private_runtime_dir,
    process_alive,
    remove_abandoned_private_runtime_dirs,
)
from sagemem.values import NAMESPACE_PATTERN
from tests.integration.coherent_cluster import Cluster

_DROP_TIMEOUT_S = 30.0


def stop_and_remove(services: EmbeddedServices) -> None:
    """Stop the servers of a private runtime directory, check they are gone, remove it."""
    status = services.status()
    pids = [server.pid for server in (status.redis, status.postgres) if server.pid is not None]
    services.down()
    survivors = [pid for pid in pids if process_alive(pid)]
    shutil.rmtree(services.runtime_dir, ignore_errors=True)
    assert survivors == [], f"server processes {survivors} survived `down()`"


@pytest.fixture(scope="session")
def service_endpoints() -> Iterator[ServiceEndpoints]:
    """The session's Redis URL and Postgres DSN, also exported as SAGEMEM_* variables."""
    names = (REDIS_URL_ENV, POSTGRES_DSN_ENV)
    saved = {name: os.environ.get(name) for name in names}
    external_redis = (saved[REDIS_URL_ENV] or "").strip()
    external_postgres = (saved[POSTGRES_DSN_ENV] or "").strip()
    if external_redis and external_postgres:
        yield ServiceEndpoints(redis_url=external_redis, postgres_dsn=external_postgres)
        return
    remove_abandoned_private_runtime_dirs()
    services = EmbeddedServices(create_private_runtime_dir())
    try:
        endpoints = ServiceEndpoints(
            redis_url=external_redis or services.ensure_redis(),
            postgres_dsn=external_postgres or services.ensure_postgres(),
        )
        os.environ[REDIS_URL_ENV] = endpoints.redis_url
        os.environ[POSTGRES_DSN_ENV] = endpoints.postgres_dsn
        yield endpoints
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        stop_and_remove(services)


@pytest.fixture
def private_services() -> Iterator[EmbeddedServices]:
    """Embedded services in a fresh private runtime directory (not started), stopped after."""
    services = EmbeddedServices(create_private_runtime_dir())
    try:
        yield services
    finally:
        stop_and_remove(services)


@pytest.fixture
def redis_url(service_endpoints: ServiceEndpoints) -> str:
    """The session's Redis URL."""
    return service_endpoints.redis_url


@pytest.fixture
def postgres_dsn(service_endpoints: ServiceEndpoints) -> str:
    """The session's Postgres DSN."""
    return service_endpoints.postgres_dsn


@pytest.fixture
def namespace() -> str:
    """A namespace no other test uses (matches `sagemem.values.NAMESPACE_PATTERN`)."""
    name = f"t{uuid.uuid4().hex}"
    assert NAMESPACE_PATTERN.fullmatch(name)
    return name


async def _drop_schema(dsn: str, schema: str) -> None:
    connection = await asyncpg.connect(dsn, timeout=_DROP_TIMEOUT_S)
    try:
        await connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await connection.close(timeout=_DROP_TIMEOUT_S)


@pytest.fixture
def pg_schema(postgres_dsn: str) -> Iterator[str]:
    """A Postgres schema name no other test uses; not created here, dropped (CASCADE) after."""
    schema = f"t_{uuid.uuid4().hex}"
    yield schema
    # In a thread of its own, so the drop never touches the test's event loop.
    with ThreadPoolExecutor(max_workers=1) as executor:
        executor.submit(asyncio.run, _drop_schema(postgres_dsn, schema)).result(
            timeout=_DROP_TIMEOUT_S * 2
        )


@pytest.fixture
async def raw_postgres(postgres_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """A plain asyncpg connection to the session's server, to look behind a tier's back."""
    connection = await asyncpg.connect(postgres_dsn, timeout=10)
    try:
        yield connection
    finally:
        await connection.close(timeout=10)


@pytest.fixture
async def cluster(
    redis_url: str, postgres_dsn: str, namespace: str, pg_schema: str
) -> AsyncIterator[Cluster]:
    """A bus, a shared home and L2 in a fresh namespace and schema; agents via `agent()`."""
    raw_url = await namespace_node_url(redis_url, namespace)
    made = Cluster(redis_url, postgres_dsn, namespace, pg_schema, raw_url=raw_url)
    await made.bus.connect()
    await made.home.connect()
    await made.l2.connect()
    try:
        yield made
    finally:
        await made.aclose()
