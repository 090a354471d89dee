#pragma once
// Conformance cases for the EmbeddingStore contract (embedding/embedding_store.h), shared by
// every implementation: embedding_test runs them on a LocalEmbeddingStore, ps_test on a
// RemoteEmbeddingStore (one sync worker, 1 and 3 servers as threads over the in-process
// transport). Each case takes a fresh store holding Tables() (tests/testutil/ps_batches.h), is
// its only caller, and compares every row bit for bit with an in-process LocalEmbeddingStore
// fed the same gradients through Lookup only, so Pull/Wait must agree with Lookup everywhere.

#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "absl/types/span.h"
#include "embedding/embedding_store.h"
#include "embedding/local_embedding_store.h"
#include "tests/testutil/ps_batches.h"

namespace t2d::testutil {

using StoreCase = void (*)(embedding::EmbeddingStore& store);
struct NamedStoreCase {
  std::string name;
  StoreCase run;
};

namespace store_cases_internal {

inline ::testing::AssertionResult BitEqual(const std::vector<float>& got, const std::vector<float>& want) {
  if (got.size() != want.size()) {
    return ::testing::AssertionFailure() << got.size() << " floats, want " << want.size();
  }
  for (size_t i = 0; i < got.size(); ++i) {
    if (std::memcmp(&got[i], &want[i], sizeof(float)) != 0) {
      return ::testing::AssertionFailure() << "float " << i << " is " << got[i] << ", want " << want[i];
    }
  }
  return ::testing::AssertionSuccess();
}

// A LocalEmbeddingStore with the same tables, for the expected rows.
inline std::unique_ptr<embedding::LocalEmbeddingStore> Reference(const embedding::EmbeddingStore& store) {
  std::vector<config::TableConfig> tables;
  for (int t = 0; t < store.num_tables(); ++t) tables.push_back(store.table_config(t));
  auto ref = embedding::LocalEmbeddingStore::Create(tables);
  EXPECT_TRUE(ref.ok()) << ref.status();
  return ref.ok() ? *std::move(ref) : nullptr;
}

inline std::vector<float> LookupRows(embedding::EmbeddingStore& store, int table, absl::Span<const int64_t> ids) {
  std::vector<float> rows(ids.size() * static_cast<size_t>(store.dim(table)));
  const absl::Status s = store.Lookup(table, ids, absl::MakeSpan(rows));
  EXPECT_TRUE(s.ok()) << s;
  return rows;
}

inline std::vector<float> WaitRows(embedding::EmbeddingStore& store, embedding::EmbeddingStore::Ticket ticket, int table,
                                   size_t num_ids) {
  std::vector<float> rows(num_ids * static_cast<size_t>(store.dim(table)));
  const absl::Status s = store.Wait(ticket, absl::MakeSpan(rows));
  EXPECT_TRUE(s.ok()) << "ticket " << ticket << ": " << s;
  return rows;
}

// Applies worker 0's batch of `step` for `table` to both stores.
inline void Push(embedding::EmbeddingStore& store, embedding::EmbeddingStore& ref, int step, int table) {
  const Batch b = MakeBatch(step, 0, table, store.dim(table));
  const absl::Status s = store.ApplyGradients(table, b.ids, b.grads);
  ASSERT_TRUE(s.ok()) << s;
  ASSERT_TRUE(ref.ApplyGradients(table, b.ids, b.grads).ok());
}

// Pull then Wait gives Lookup's rows, for repeated ids, on every table, and for no ids at all.
inline void PullWaitEqualsLookup(embedding::EmbeddingStore& store) {
  auto ref = Reference(store);
  ASSERT_NE(ref, nullptr);
  const std::vector<int64_t> probe = ProbeIds();
  for (int t = 0; t < store.num_tables(); ++t) {
    ASSERT_NO_FATAL_FAILURE(Push(store, *ref, 0, t));
    auto ticket = store.Pull(t, probe);
    ASSERT_TRUE(ticket.ok()) << ticket.status();
    EXPECT_NE(*ticket, 0u);
    const std::vector<float> want = LookupRows(*ref, t, probe);
    EXPECT_TRUE(BitEqual(WaitRows(store, *ticket, t, probe.size()), want)) << "table " << t;
    EXPECT_TRUE(BitEqual(LookupRows(store, t, probe), want)) << "table " << t;
  }
  auto none = store.Pull(0, {});
  ASSERT_TRUE(none.ok()) << none.status();
  EXPECT_TRUE(store.Wait(*none, {}).ok());
}

// Several tickets outstanding at once, on both tables, waited for in an order unrelated to the
// order of the pulls.
inline void TicketsWaitedOutOfOrder(embedding::EmbeddingStore& store) {
  auto ref = Reference(store);
  ASSERT_NE(ref, nullptr);
  ASSERT_NO_FATAL_FAILURE(Push(store, *ref, 0, 0));
  ASSERT_NO_FATAL_FAILURE(Push(store, *ref, 0, 1));
  struct Read {
    int table;
    std::vector<int64_t> ids;
    embedding::EmbeddingStore::Ticket ticket = 0;
  };
  std::vector<Read> reads = {{0, {1, 2, 3, 1}}, {1, {40, -5, 40, 7, 7}}, {0, ProbeIds()}, {1, {9}}, {0, {54, -1, 0}}};
  for (Read& r : reads) {
    auto ticket = store.Pull(r.table, r.ids);
    ASSERT_TRUE(ticket.ok()) << ticket.status();
    r.ticket = *ticket;
  }
  for (size_t i = 0; i < reads.size(); ++i) {
    for (size_t j = 0; j < i; ++j) EXPECT_NE(reads[i].ticket, reads[j].ticket);
  }
  for (size_t i : std::vector<size_t>{3, 0, 4, 2, 1}) {
    const Read& r = reads[i];
    EXPECT_TRUE(BitEqual(WaitRows(store, r.ticket, r.table, r.ids.size()), LookupRows(*ref, r.table, r.ids))) << "read " << i;
  }
}

// A pull observes every push made before the Pull() call and none made after it, however late
// its Wait comes (what the trainer's prefetch relies on).
inline void PullSeesPushesMadeBeforeIt(embedding::EmbeddingStore& store) {
  auto ref = Reference(store);
  ASSERT_NE(ref, nullptr);
  const std::vector<int64_t> probe = ProbeIds();
  for (int t = 0; t < store.num_tables(); ++t) {
    auto before = store.Pull(t, probe);
    ASSERT_TRUE(before.ok()) << before.status();
    const std::vector<float> want_before = LookupRows(*ref, t, probe);
    ASSERT_NO_FATAL_FAILURE(Push(store, *ref, 1, t));
    auto after_one = store.Pull(t, probe);
    ASSERT_TRUE(after_one.ok()) << after_one.status();
    const std::vector<float> want_after_one = LookupRows(*ref, t, probe);
    ASSERT_NO_FATAL_FAILURE(Push(store, *ref, 2, t));
    const std::vector<float> want_after_two = LookupRows(*ref, t, probe);
    ASSERT_FALSE(BitEqual(want_after_one, want_after_two)) << "the pushes must change the probed rows";
    EXPECT_TRUE(BitEqual(LookupRows(store, t, probe), want_after_two)) << "table " << t;
    EXPECT_TRUE(BitEqual(WaitRows(store, *after_one, t, probe.size()), want_after_one)) << "table " << t;
    EXPECT_TRUE(BitEqual(WaitRows(store, *before, t, probe.size()), want_before)) << "table " << t;
  }
}

// Caller errors are InvalidArgument: a ticket waited for twice, a ticket never issued, a wrong
// buffer (which still consumes the ticket), a bad table. The store stays usable.
inline void TicketAndArgumentErrors(embedding::EmbeddingStore& store) {
  auto ref = Reference(store);
  ASSERT_NE(ref, nullptr);
  const std::vector<int64_t> ids = {3, 8, 3};
  std::vector<float> rows(ids.size() * static_cast<size_t>(store.dim(0)));
  auto ticket = store.Pull(0, ids);
  ASSERT_TRUE(ticket.ok()) << ticket.status();
  ASSERT_TRUE(store.Wait(*ticket, absl::MakeSpan(rows)).ok());
  EXPECT_TRUE(absl::IsInvalidArgument(store.Wait(*ticket, absl::MakeSpan(rows))));  // twice
  EXPECT_TRUE(absl::IsInvalidArgument(store.Wait(0, absl::MakeSpan(rows))));
  EXPECT_TRUE(absl::IsInvalidArgument(store.Wait(*ticket + 1000, absl::MakeSpan(rows))));

  auto wrong = store.Pull(0, ids);
  ASSERT_TRUE(wrong.ok()) << wrong.status();
  EXPECT_TRUE(absl::IsInvalidArgument(store.Wait(*wrong, absl::MakeSpan(rows).subspan(1))));
  EXPECT_TRUE(absl::IsInvalidArgument(store.Wait(*wrong, absl::MakeSpan(rows))));  // consumed

  EXPECT_TRUE(absl::IsInvalidArgument(store.Pull(store.num_tables(), ids).status()));
  EXPECT_TRUE(absl::IsInvalidArgument(store.Pull(-1, ids).status()));
  EXPECT_TRUE(absl::IsInvalidArgument(store.Lookup(store.num_tables(), ids, absl::MakeSpan(rows))));
  EXPECT_TRUE(absl::IsInvalidArgument(store.Lookup(0, ids, absl::MakeSpan(rows).subspan(1))));

  auto again = store.Pull(0, ids);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_TRUE(BitEqual(WaitRows(store, *again, 0, ids.size()), LookupRows(*ref, 0, ids)));
}

}  // namespace store_cases_internal

inline std::vector<NamedStoreCase> EmbeddingStoreCases() {
  namespace c = store_cases_internal;
  return {
      {"PullWaitEqualsLookup", c::PullWaitEqualsLookup},
      {"TicketsWaitedOutOfOrder", c::TicketsWaitedOutOfOrder},
      {"PullSeesPushesMadeBeforeIt", c::PullSeesPushesMadeBeforeIt},
      {"TicketAndArgumentErrors", c::TicketAndArgumentErrors},
  };
}

}  // namespace t2d::testutil
