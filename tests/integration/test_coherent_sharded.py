"""The coherent L1's integration tests (and write-update's) again, on one server, with the bus on
sharded pub/sub (`CoherenceBus(pubsub="sharded")`, the default on a cluster, where
`tests/integration/cluster/` runs them too): an agent receives only the messages about keys it
follows, so the tests that invalidate, update or recall fail if a step that makes an agent a
holder or an owner does not follow the key first (the message would reach nobody)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from sagemem.redis_topology import namespace_node_url
from tests.integration.coherent_cluster import Cluster
from tests.integration.test_coherent_l1 import (  # re-run with sharded pub/sub below
    test_a_coherent_hierarchy_needs_a_home_and_one_namespace,
    test_a_fill_racing_an_invalidation_is_returned_once_and_never_cached,
    test_a_forged_invalidation_cannot_stall_reads,
    test_a_late_fill_cannot_put_an_older_version_back_into_l2_after_an_eviction,
    test_a_returned_container_is_a_copy,
    test_an_owner_compares_versions_locally,
    test_an_owners_write_back_racing_a_recall_is_not_lost,
    test_bad_input_is_refused_before_anything_changes,
    test_capacity_evicts_the_least_recently_used_entry,
    test_compare_and_swap_commits_only_at_the_expected_version,
    test_concurrent_updates_lose_nothing,
    test_configuration_errors_say_what_to_fix,
    test_conflict_policies_are_explicit,
    test_delete_is_a_committed_version_that_every_agent_sees,
    test_fill_data_older_than_an_invalidation_is_fetched_again,
    test_flush_and_close_write_owned_data_back,
    test_hierarchies_of_coherent_agents_share_l2_and_l3,
    test_idle_keys_are_forgotten_and_read_again_correctly,
    test_l1_write_takes_ownership_and_a_reader_recalls_the_value,
    test_of_two_concurrent_deletes_exactly_one_removed_the_value,
    test_values_read_back_equal_from_l1_l2_and_the_home,
    test_write_through_invalidates_a_holder_and_the_next_read_refetches,
)
from tests.integration.test_write_update import (  # likewise
    test_a_delete_and_an_owned_write_invalidate,
    test_a_holder_moves_to_the_written_value_without_a_miss,
    test_a_value_above_the_bound_is_invalidated_instead,
    test_a_value_the_relay_stored_in_l2_reads_back_equal_to_what_was_written,
    test_a_writer_closed_right_after_its_writes_leaves_no_registration,
    test_an_invalidating_writer_and_an_updating_writer_share_a_namespace,
    test_an_updated_copy_reads_back_equal_to_what_was_written,
    test_an_updating_writer_gets_its_copy_back_and_its_next_read_hits,
    test_concurrent_updates_leave_every_holder_on_the_last_version,
    test_only_values_within_the_bound_are_stored_in_l2,
    test_the_holder_stays_registered_and_keeps_receiving_updates,
    test_the_write_update_leaves_its_value_in_l2_for_the_next_miss,
    test_without_refetch_the_writer_is_left_without_a_copy,
)

__all__ = [
    "test_a_coherent_hierarchy_needs_a_home_and_one_namespace",
    "test_a_delete_and_an_owned_write_invalidate",
    "test_a_fill_racing_an_invalidation_is_returned_once_and_never_cached",
    "test_a_forged_invalidation_cannot_stall_reads",
    "test_a_holder_moves_to_the_written_value_without_a_miss",
    "test_a_late_fill_cannot_put_an_older_version_back_into_l2_after_an_eviction",
    "test_a_returned_container_is_a_copy",
    "test_a_value_above_the_bound_is_invalidated_instead",
    "test_a_value_the_relay_stored_in_l2_reads_back_equal_to_what_was_written",
    "test_a_writer_closed_right_after_its_writes_leaves_no_registration",
    "test_an_invalidating_writer_and_an_updating_writer_share_a_namespace",
    "test_an_owner_compares_versions_locally",
    "test_an_owners_write_back_racing_a_recall_is_not_lost",
    "test_an_updated_copy_reads_back_equal_to_what_was_written",
    "test_an_updating_writer_gets_its_copy_back_and_its_next_read_hits",
    "test_bad_input_is_refused_before_anything_changes",
    "test_capacity_evicts_the_least_recently_used_entry",
    "test_compare_and_swap_commits_only_at_the_expected_version",
    "test_concurrent_updates_leave_every_holder_on_the_last_version",
    "test_concurrent_updates_lose_nothing",
    "test_configuration_errors_say_what_to_fix",
    "test_conflict_policies_are_explicit",
    "test_delete_is_a_committed_version_that_every_agent_sees",
    "test_fill_data_older_than_an_invalidation_is_fetched_again",
    "test_flush_and_close_write_owned_data_back",
    "test_hierarchies_of_coherent_agents_share_l2_and_l3",
    "test_idle_keys_are_forgotten_and_read_again_correctly",
    "test_l1_write_takes_ownership_and_a_reader_recalls_the_value",
    "test_of_two_concurrent_deletes_exactly_one_removed_the_value",
    "test_only_values_within_the_bound_are_stored_in_l2",
    "test_the_holder_stays_registered_and_keeps_receiving_updates",
    "test_the_write_update_leaves_its_value_in_l2_for_the_next_miss",
    "test_values_read_back_equal_from_l1_l2_and_the_home",
    "test_without_refetch_the_writer_is_left_without_a_copy",
    "test_write_through_invalidates_a_holder_and_the_next_read_refetches",
]


@pytest.fixture
async def cluster(
    redis_url: str, postgres_dsn: str, namespace: str, pg_schema: str
) -> AsyncIterator[Cluster]:
    """As the shared fixture, with the bus on sharded pub/sub."""
    raw_url = await namespace_node_url(redis_url, namespace)
    made = Cluster(redis_url, postgres_dsn, namespace, pg_schema, raw_url=raw_url, pubsub="sharded")
    await made.bus.connect()
    await made.home.connect()
    await made.l2.connect()
    try:
        assert made.bus.sharded
        yield made
    finally:
        await made.aclose()
