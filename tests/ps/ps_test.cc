// ps/: wire framing, server validation of malformed requests, and whole jobs as threads
// (servers + RemoteEmbeddingStore workers over the in-process transport): sync results equal
// an in-process LocalEmbeddingStore bit for bit, the async staleness bound holds, the shared
// EmbeddingStore conformance cases (prefetch tickets), save/load across server counts, and
// stalls/dead peers end in named errors.

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <random>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "embedding/local_embedding_store.h"
#include "embedding/sharding.h"
#include "ps/messages.h"
#include "ps/remote_embedding_store.h"
#include "ps/shard_server.h"
#include "tests/testutil/embedding_store_cases.h"
#include "tests/testutil/ps_batches.h"
#include "tests/testutil/ps_job.h"

namespace t2d::ps {
namespace {

using testutil::Batch;
using testutil::Dedup;
using testutil::MakeBatch;
using testutil::ProbeIds;
using testutil::Tables;

PsOptions TestOptions() {
  PsOptions o;
  o.timeout = absl::Seconds(5);
  o.idle_timeout = absl::Seconds(20);
  return o;
}


absl::Time Soon() { return absl::Now() + absl::Seconds(10); }

// ---------------------------------------------------------------------------------------------
// Framing.

TEST(Messages, RoundTripAndAlignment) {
  Header h;
  h.set_version(kWireVersion);
  h.set_type(Header::PULL);
  h.set_request_id(42);
  h.set_table(1);
  const std::string payload = "0123456789abcdef";
  const std::string bytes = EncodeFrame(h, payload);
  auto f = DecodeFrame(bytes);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(f->header.request_id(), 42u);
  EXPECT_EQ(f->payload, payload);
  EXPECT_EQ(static_cast<size_t>(f->payload.data() - bytes.data()) % 8, 0u);
}

// A frame built in a reused buffer: header and padding written in full over stale bytes, the
// payload's bytes left for the caller, the same layout as a fresh frame.
TEST(Messages, FrameInReusedBufferOverwritesHeaderAndPadding) {
  Header h;
  h.set_version(kWireVersion);
  h.set_type(Header::PULL);
  h.set_request_id(7);
  size_t fresh_offset = 0;
  const std::string fresh = EncodeFrame(h, 24, &fresh_offset);
  ASSERT_EQ(FrameBytes(h, 24), fresh.size());
  size_t offset = 0;
  std::string bytes = EncodeFrameIn(std::string(100, '\xab'), h, 24, &offset);
  ASSERT_EQ(offset, fresh_offset);
  ASSERT_GT(offset, 4 + h.ByteSizeLong());  // there is padding to overwrite
  ASSERT_EQ(bytes.size(), fresh.size());
  EXPECT_EQ(bytes.substr(0, offset), fresh.substr(0, offset));  // prefix, header and zero padding
  EXPECT_EQ(bytes.substr(offset), std::string(24, '\xab'));     // untouched: the caller fills it
  auto f = DecodeFrame(bytes);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(f->header.request_id(), 7u);
  EXPECT_EQ(f->payload.size(), 24u);
}

TEST(Messages, MalformedFramesAreInvalidArgument) {
  EXPECT_TRUE(absl::IsInvalidArgument(DecodeFrame("ab").status()));
  std::string huge(8, '\0');
  const uint32_t n = kMaxHeaderBytes + 1;
  std::memcpy(huge.data(), &n, 4);
  EXPECT_TRUE(absl::IsInvalidArgument(DecodeFrame(huge).status()));
  std::string past(8, '\0');
  const uint32_t m = 100;
  std::memcpy(past.data(), &m, 4);
  auto s = DecodeFrame(past);
  EXPECT_TRUE(absl::IsInvalidArgument(s.status()));
  EXPECT_NE(std::string(s.status().message()).find("runs past the end"), std::string::npos);
  std::string garbage(16, '\xff');
  const uint32_t k = 8;
  std::memcpy(garbage.data(), &k, 4);
  EXPECT_TRUE(absl::IsInvalidArgument(DecodeFrame(garbage).status()));
  Header old;
  old.set_version(kWireVersion + 1);
  auto v = DecodeFrame(EncodeFrame(old));
  EXPECT_NE(std::string(v.status().message()).find("wire version"), std::string::npos);
}

TEST(Messages, ReplyStatusMapsCodes) {
  Header h;
  h.set_status_code(3);
  h.set_error("bad");
  EXPECT_TRUE(absl::IsInvalidArgument(ReplyStatus(h)));
  h.set_status_code(999);
  EXPECT_EQ(ReplyStatus(h).code(), absl::StatusCode::kUnknown);
  h.set_status_code(0);
  EXPECT_TRUE(ReplyStatus(h).ok());
}


// ---------------------------------------------------------------------------------------------
// Server validation: every malformed request gets an error reply, and the server keeps serving.

class RawClient {
 public:
  RawClient(comm::Transport* t, int server) : t_(t), server_(server) {}
  // Sends `bytes` and returns the reply header.
  Header Roundtrip(std::string bytes, std::string* payload = nullptr) {
    EXPECT_TRUE(t_->Send(server_, kRequestTag, std::move(bytes), Soon()).ok());
    auto m = t_->Recv(server_, kReplyTag, Soon());
    EXPECT_TRUE(m.ok()) << m.status();
    if (!m.ok()) return Header();
    auto f = DecodeFrame(m->bytes);
    EXPECT_TRUE(f.ok()) << f.status();
    if (payload != nullptr) *payload = std::string(f->payload);
    return f->header;
  }

 private:
  comm::Transport* t_;
  int server_;
};

Header Req(Header::Type type, uint64_t id, int table, int64_t n, int dim, int64_t round = 0) {
  Header h;
  h.set_version(kWireVersion);
  h.set_type(type);
  h.set_request_id(id);
  h.set_table(table);
  h.set_num_ids(n);
  h.set_dim(dim);
  h.set_round(round);
  return h;
}

std::string Ids(const std::vector<int64_t>& ids) { return std::string(reinterpret_cast<const char*>(ids.data()), ids.size() * 8); }

TEST(ShardServer, MalformedRequestsGetErrorRepliesAndServingContinues) {
  const auto tables = Tables();
  PsOptions options = TestOptions();
  options.roles = comm::RoleAssignment{3, 2, 1};  // ranks 0, 1 servers; rank 2 the worker
  options.max_message_bytes = 64 * 1024;
  comm::InProcHub hub(3);
  auto t0 = hub.Connect(0);
  auto store = embedding::LocalEmbeddingStore::Create(tables, 0, 2);
  ASSERT_TRUE(store.ok());
  ShardServer server(t0.get(), store->get(), options);
  absl::Status run;
  std::thread thread([&] { run = server.Run(); });

  // Ids owned by shard 0 of 2, and one that is not.
  std::vector<int64_t> mine, theirs;
  for (int64_t i = 0; mine.size() < 4 || theirs.empty(); ++i) (embedding::ShardOf(i, 2) == 0 ? mine : theirs).push_back(i);
  mine.resize(4);

  auto t1 = hub.Connect(1);
  {  // a server rank is not allowed to send requests
    RawClient fake_server(t1.get(), 0);
    Header r = fake_server.Roundtrip(EncodeFrame(Req(Header::STATS, 9, 0, 0, 0)));
    EXPECT_EQ(r.status_code(), static_cast<int>(absl::StatusCode::kPermissionDenied));
    EXPECT_NE(r.error().find("not a worker"), std::string::npos);
  }
  auto t2 = hub.Connect(2);
  RawClient c(t2.get(), 0);
  struct BadCase {
    std::string what;
    std::string bytes;
    std::string expect;
  };
  std::string grads_nan(4 * 8 * 4, '\0');
  const float nan = std::nanf("");
  std::memcpy(grads_nan.data() + 12, &nan, 4);
  const std::vector<BadCase> cases = {
      {"truncated", "ab", "shorter than"},
      {"bad header", std::string("\x04\0\0\0\xff\xff\xff\xff", 8), "does not parse"},
      {"unknown type", EncodeFrame(Req(static_cast<Header::Type>(77), 1, 0, 0, 8)), "unknown request type"},
      {"no such table", EncodeFrame(Req(Header::PULL, 2, 5, 1, 8), Ids({mine[0]})), "table index 5 does not exist"},
      {"negative table", EncodeFrame(Req(Header::PULL, 3, -1, 1, 8), Ids({mine[0]})), "does not exist"},
      {"dim mismatch", EncodeFrame(Req(Header::PULL, 4, 0, 1, 7), Ids({mine[0]})), "has dim 8, request says 7"},
      {"count mismatch", EncodeFrame(Req(Header::PULL, 5, 0, 3, 8), Ids({mine[0]})), "needs a payload of 24 bytes, got 8"},
      {"negative count", EncodeFrame(Req(Header::PULL, 6, 0, -1, 8)), "negative"},
      {"count over cap", EncodeFrame(Req(Header::PULL, 7, 0, 1 << 20, 8)), "max_message_bytes"},
      {"oversized message", EncodeFrame(Req(Header::STATS, 8, 0, 0, 0), std::string(70 * 1024, 'x')), "exceeds max_message_bytes"},
      {"foreign id", EncodeFrame(Req(Header::PULL, 10, 0, 1, 8), Ids({theirs[0]})), "belongs to shard 1"},
      {"push payload short", EncodeFrame(Req(Header::PUSH, 11, 0, 4, 8, 1), Ids(mine)), "needs a payload of 160 bytes"},
      {"push wrong round", EncodeFrame(Req(Header::PUSH, 12, 0, 4, 8, 3), Ids(mine) + std::string(128, '\0')), "expected round 1"},
      {"push non-finite", EncodeFrame(Req(Header::PUSH, 13, 0, 4, 8, 1), Ids(mine) + grads_nan), "not finite"},
      {"pull wrong round", EncodeFrame(Req(Header::PULL, 14, 0, 1, 8, 2), Ids({mine[0]})), "says 2 pushes"},
      {"save without path", EncodeFrame(Req(Header::SAVE, 15, 0, 0, 0)), "without a path"},
      {"save to missing folder",
       [] {
         Header h = Req(Header::SAVE, 16, 0, 0, 0);
         h.set_path("/nonexistent/t2d/folder");
         return EncodeFrame(h);
       }(),
       "/nonexistent/t2d/folder"},
      {"load from empty path",
       [] {
         Header h = Req(Header::LOAD, 17, 0, 0, 0);
         h.set_path("/nonexistent/t2d/folder");
         return EncodeFrame(h);
       }(),
       ""},
      {"load of no such table",
       [] {
         Header h = Req(Header::LOAD, 19, 7, 0, 0);
         h.set_path("/tmp");
         return EncodeFrame(h);
       }(),
       "LOAD of table index 7, which does not exist"},
      {"stats with payload", EncodeFrame(Req(Header::STATS, 18, 0, 0, 0), "zz"), "unexpected payload"},
  };
  for (const auto& bad : cases) {
    Header r = c.Roundtrip(bad.bytes);
    EXPECT_NE(r.status_code(), 0) << bad.what;
    EXPECT_NE(r.error().find(bad.expect), std::string::npos) << bad.what << ": " << r.error();
  }
  // Still serving: a valid pull returns the initial rows, a valid push is accepted.
  std::string rows;
  Header ok = c.Roundtrip(EncodeFrame(Req(Header::PULL, 100, 0, 4, 8, 0), Ids(mine)), &rows);
  EXPECT_EQ(ok.status_code(), 0) << ok.error();
  EXPECT_EQ(ok.request_id(), 100u);
  std::vector<float> expected(32);
  ASSERT_TRUE((*store)->Lookup(0, mine, absl::MakeSpan(expected)).ok());
  ASSERT_EQ(rows.size(), 128u);
  EXPECT_EQ(std::memcmp(rows.data(), expected.data(), 128), 0);
  Header pushed = c.Roundtrip(EncodeFrame(Req(Header::PUSH, 101, 0, 4, 8, 1), Ids(mine) + std::string(128, '\0')));
  EXPECT_EQ(pushed.status_code(), 0) << pushed.error();
  Header bye = c.Roundtrip(EncodeFrame(Req(Header::SHUTDOWN, 102, 0, 0, 0)));
  EXPECT_EQ(bye.status_code(), 0);
  thread.join();
  EXPECT_TRUE(run.ok()) << run;
  EXPECT_EQ(server.stats().errors(), static_cast<int64_t>(cases.size()) + 1);
  EXPECT_EQ(server.stats().rounds_applied(), 1);
}

// ---------------------------------------------------------------------------------------------
// Whole jobs as threads.

struct JobShape {
  int servers;
  int workers;
  int64_t pull_piece_bytes = 0;  // 0: the default
};

class SyncJob : public ::testing::TestWithParam<JobShape> {};

// Every pull (after each push round) equals a LocalEmbeddingStore that applied, per round, the
// workers' deduplicated gradients concatenated in worker order: bit for bit.
TEST_P(SyncJob, MatchesLocalStoreExactly) {
  // Not a structured binding: C++17 lambdas (clang) cannot capture one.
  const int num_servers = GetParam().servers, num_workers = GetParam().workers;
  const auto tables = Tables();
  constexpr int kSteps = 6;
  PsOptions options = TestOptions();
  if (GetParam().pull_piece_bytes > 0) options.pull_piece_bytes = GetParam().pull_piece_bytes;
  auto result = testutil::RunPsJob(num_servers, num_workers, tables, options,
                                   [&](int w, RemoteEmbeddingStore& store, comm::Communicator&) {
    auto ref_or = embedding::LocalEmbeddingStore::Create(tables);
    ASSERT_TRUE(ref_or.ok());
    auto& ref = **ref_or;
    const auto probe = ProbeIds();
    for (int step = 0; step < kSteps; ++step) {
      for (int t = 0; t < 2; ++t) {
        const int dim = tables[static_cast<size_t>(t)].dim();
        std::vector<float> got(probe.size() * static_cast<size_t>(dim)), want(got.size());
        ASSERT_TRUE(store.Lookup(t, probe, absl::MakeSpan(got)).ok());
        ASSERT_TRUE(ref.Lookup(t, probe, absl::MakeSpan(want)).ok());
        ASSERT_EQ(std::memcmp(got.data(), want.data(), got.size() * 4), 0) << "worker " << w << " step " << step << " table " << t;
        const Batch mine = MakeBatch(step, w, t, dim);
        // Repeated ids, scattered from the first position that asked (across pieces).
        std::vector<float> got_mine(mine.ids.size() * static_cast<size_t>(dim)), want_mine(got_mine.size());
        ASSERT_TRUE(store.Lookup(t, mine.ids, absl::MakeSpan(got_mine)).ok());
        ASSERT_TRUE(ref.Lookup(t, mine.ids, absl::MakeSpan(want_mine)).ok());
        ASSERT_EQ(std::memcmp(got_mine.data(), want_mine.data(), got_mine.size() * 4), 0) << "worker " << w << " step " << step;
        ASSERT_TRUE(store.ApplyGradients(t, mine.ids, mine.grads).ok());
        Batch all;
        for (int v = 0; v < num_workers; ++v) {
          Batch d = Dedup(MakeBatch(step, v, t, dim), dim);
          all.ids.insert(all.ids.end(), d.ids.begin(), d.ids.end());
          all.grads.insert(all.grads.end(), d.grads.begin(), d.grads.end());
        }
        ASSERT_TRUE(ref.ApplyGradients(t, all.ids, all.grads).ok());
      }
    }
    for (int t = 0; t < 2; ++t) {
      const int dim = tables[static_cast<size_t>(t)].dim();
      std::vector<float> got(probe.size() * static_cast<size_t>(dim)), want(got.size());
      ASSERT_TRUE(store.Lookup(t, probe, absl::MakeSpan(got)).ok());
      ASSERT_TRUE(ref.Lookup(t, probe, absl::MakeSpan(want)).ok());
      ASSERT_EQ(std::memcmp(got.data(), want.data(), got.size() * 4), 0) << "final, table " << t;
    }
    auto stats = store.Stats();
    ASSERT_TRUE(stats.ok()) << stats.status();
    auto ref_stats = ref.Stats();
    for (int t = 0; t < 2; ++t) {
      EXPECT_EQ((*stats)[static_cast<size_t>(t)].rows, (*ref_stats)[static_cast<size_t>(t)].rows);
      EXPECT_EQ((*stats)[static_cast<size_t>(t)].step, kSteps);
    }
    // Every server reports its process's resident memory (here: this test process).
    auto servers = store.ServerStats();
    ASSERT_TRUE(servers.ok()) << servers.status();
    ASSERT_EQ(servers->size(), static_cast<size_t>(num_servers));
    for (const auto& s : *servers) {
      EXPECT_GT(s.rss_bytes(), 0);
      EXPECT_GE(s.peak_rss_bytes(), s.rss_bytes());
    }
    // ... and its shard of each table, which add up to the tables' totals.
    for (int t = 0; t < 2; ++t) {
      int64_t rows = 0, bytes = 0;
      for (const auto& s : *servers) {
        ASSERT_EQ(s.tables_size(), 2);
        rows += s.tables(t).rows();
        bytes += s.tables(t).memory_bytes();
      }
      EXPECT_EQ(rows, (*stats)[static_cast<size_t>(t)].rows);
      EXPECT_EQ(bytes, (*stats)[static_cast<size_t>(t)].memory_bytes);
    }
    ASSERT_TRUE(store.Shutdown().ok());
  });
  for (const auto& s : result.server_status) EXPECT_TRUE(s.ok()) << s;
  int64_t rounds = 0;
  for (const auto& s : result.server_stats) {
    rounds += s.rounds_applied();
    EXPECT_EQ(s.max_staleness(), 0);
  }
  EXPECT_EQ(rounds, int64_t{kSteps} * 2 * num_servers);  // one combined update per table per step per server
}

// The pieces: 40 bytes are one row of the dim-8 table and three of the dim-3 one, so every pull
// is many requests per server, and repeated ids meet their first occurrence in another piece.
INSTANTIATE_TEST_SUITE_P(Shapes, SyncJob,
                         ::testing::Values(JobShape{1, 1}, JobShape{1, 2}, JobShape{2, 2}, JobShape{3, 3},
                                           JobShape{1, 1, 40}, JobShape{3, 2, 40}),
                         [](const auto& param_info) {
                           return absl::StrCat(param_info.param.servers, "s", param_info.param.workers, "w",
                                               param_info.param.pull_piece_bytes > 0
                                                   ? absl::StrCat("_pieces", param_info.param.pull_piece_bytes, "B")
                                                   : "");
                         });

class AsyncJob : public ::testing::TestWithParam<int> {};

// Worker 1 is slow; worker 0 may run ahead by at most tau rounds of the slowest worker.
TEST_P(AsyncJob, StalenessBoundHolds) {
  const int tau = GetParam();
  const auto tables = Tables();
  PsOptions options = TestOptions();
  options.consistency = Consistency::kAsync;
  options.staleness = tau;
  constexpr int kSteps = 20;
  std::vector<int64_t> max_unacked(2);
  auto result = testutil::RunPsJob(2, 2, tables, options, [&](int w, RemoteEmbeddingStore& store, comm::Communicator& comm) {
    const auto probe = ProbeIds();
    std::vector<float> rows(probe.size() * 8);
    for (int step = 0; step < kSteps; ++step) {
      if (w == 1) absl::SleepFor(absl::Milliseconds(3));
      ASSERT_TRUE(store.Lookup(0, probe, absl::MakeSpan(rows)).ok());
      const Batch b = MakeBatch(step, w, 0, 8);
      ASSERT_TRUE(store.ApplyGradients(0, b.ids, b.grads).ok());
    }
    ASSERT_TRUE(store.Flush().ok());
    max_unacked[static_cast<size_t>(w)] = store.max_unacked_rounds();
    ASSERT_TRUE(comm.Barrier(Soon()).ok());
    // After both flushed, everything is applied: equal to the reference up to summation order.
    auto ref = *embedding::LocalEmbeddingStore::Create(tables);
    for (int step = 0; step < kSteps; ++step) {
      for (int v = 0; v < 2; ++v) {
        Batch d = Dedup(MakeBatch(step, v, 0, 8), 8);
        ASSERT_TRUE(ref->ApplyGradients(0, d.ids, d.grads).ok());
      }
    }
    std::vector<float> want(rows.size());
    ASSERT_TRUE(store.Lookup(0, probe, absl::MakeSpan(rows)).ok());
    ASSERT_TRUE(ref->Lookup(0, probe, absl::MakeSpan(want)).ok());
    // Adagrad applied per worker push instead of per combined round: close, not equal.
    for (size_t i = 0; i < rows.size(); ++i) ASSERT_NEAR(rows[i], want[i], 0.2) << i;
    ASSERT_TRUE(comm.Barrier(Soon()).ok());
    ASSERT_TRUE(store.Shutdown().ok());
  });
  for (const auto& s : result.server_status) EXPECT_TRUE(s.ok()) << s;
  int64_t worst = 0;
  for (const auto& s : result.server_stats) worst = std::max(worst, s.max_staleness());
  EXPECT_LE(worst, tau);
  if (tau > 0) {
    EXPECT_GE(worst, 1) << "worker 0 never ran ahead: the test did not exercise the bound";
  }
  for (int64_t u : max_unacked) EXPECT_LE(u, std::max(tau, 0));
}

INSTANTIATE_TEST_SUITE_P(Tau, AsyncJob, ::testing::Values(0, 1, 3));

// The EmbeddingStore conformance cases (shared with LocalEmbeddingStore in embedding_test) on
// one sync worker: Pull/Wait with several tickets outstanding and waited out of order, a pull
// issued before a push reading the state before it (prefetch), ticket errors.
// Also with pulls cut into pieces of one row (several tickets' pieces interleave on the wire).
class RemoteStoreConformance : public ::testing::TestWithParam<std::tuple<testutil::NamedStoreCase, JobShape>> {};

TEST_P(RemoteStoreConformance, Case) {
  const testutil::StoreCase run = std::get<0>(GetParam()).run;
  const int num_servers = std::get<1>(GetParam()).servers;
  PsOptions options = TestOptions();
  if (std::get<1>(GetParam()).pull_piece_bytes > 0) options.pull_piece_bytes = std::get<1>(GetParam()).pull_piece_bytes;
  auto result = testutil::RunPsJob(num_servers, 1, Tables(), options, [&](int, RemoteEmbeddingStore& store, comm::Communicator&) {
    run(store);
    EXPECT_TRUE(store.Shutdown().ok());
  });
  for (const auto& s : result.server_status) EXPECT_TRUE(s.ok()) << s;
}

INSTANTIATE_TEST_SUITE_P(All, RemoteStoreConformance,
                         ::testing::Combine(::testing::ValuesIn(testutil::EmbeddingStoreCases()),
                                            ::testing::Values(JobShape{1, 1}, JobShape{3, 1}, JobShape{3, 1, 4})),
                         [](const auto& param_info) {
                           const JobShape& shape = std::get<1>(param_info.param);
                           return absl::StrCat(std::get<0>(param_info.param).name, "_", shape.servers, "s",
                                               shape.pull_piece_bytes > 0 ? "_pieces" : "");
                         });

// A pull larger than max_message_bytes goes out in pieces that fit; a single row that cannot
// fit is refused before anything is sent.
TEST(RemoteEmbeddingStore, PullsLargerThanAMessageGoInPieces) {
  const auto tables = Tables();
  PsOptions options = TestOptions();
  options.max_message_bytes = 1024 + 2 * 8 * 4;  // a frame's header room and two rows of dim 8
  auto result = testutil::RunPsJob(2, 1, tables, options, [&](int, RemoteEmbeddingStore& store, comm::Communicator&) {
    auto ref = embedding::LocalEmbeddingStore::Create(tables);
    ASSERT_TRUE(ref.ok());
    const auto probe = ProbeIds();
    std::vector<float> got(probe.size() * 8), want(got.size());
    ASSERT_TRUE(store.Lookup(0, probe, absl::MakeSpan(got)).ok());
    ASSERT_TRUE((*ref)->Lookup(0, probe, absl::MakeSpan(want)).ok());
    EXPECT_EQ(std::memcmp(got.data(), want.data(), got.size() * 4), 0);
    EXPECT_TRUE(store.Shutdown().ok());
  });
  for (const auto& s : result.server_status) EXPECT_TRUE(s.ok()) << s;
  int64_t requests = 0;
  for (const auto& s : result.server_stats) requests += s.requests();
  EXPECT_GE(requests, static_cast<int64_t>(ProbeIds().size()) / 2);  // two rows a piece at most

  options.max_message_bytes = 1024 + 8 * 4 - 1;  // not even one row of the dim-8 table
  auto refused = testutil::RunPsJob(1, 1, tables, options, [&](int, RemoteEmbeddingStore& store, comm::Communicator&) {
    std::vector<float> rows(8);
    absl::Status s = store.Lookup(0, {1}, absl::MakeSpan(rows));
    EXPECT_TRUE(absl::IsInvalidArgument(s)) << s;
    EXPECT_NE(std::string(s.message()).find("does not fit max_message_bytes"), std::string::npos) << s;
    EXPECT_TRUE(store.Shutdown().ok());
  });
  EXPECT_TRUE(refused.server_status[0].ok()) << refused.server_status[0];
  EXPECT_EQ(refused.server_stats[0].pulled_rows(), 0);
}

// The ids of a pull go out as given: a repeated id is looked up again (the id contract leaves
// deduplication to the caller), each position gets its row, with one server (pieces are ranges
// of positions) and with two (pieces are lists of positions).
TEST(RemoteEmbeddingStore, PullSendsRepeatsAndPlacesEveryPosition) {
  const auto tables = Tables();
  const std::vector<int64_t> ids = {5, 9, 5, 5, 12, 9, 40, 5};
  for (int servers : {1, 2}) {
    PsOptions options = TestOptions();
    options.pull_piece_bytes = 3 * 8 * 4;  // three rows a piece
    auto result = testutil::RunPsJob(servers, 1, tables, options, [&](int, RemoteEmbeddingStore& store, comm::Communicator&) {
      auto ref = embedding::LocalEmbeddingStore::Create(tables);
      ASSERT_TRUE(ref.ok());
      std::vector<float> got(ids.size() * 8), want(got.size());
      ASSERT_TRUE(store.Lookup(0, ids, absl::MakeSpan(got)).ok());
      ASSERT_TRUE((*ref)->Lookup(0, ids, absl::MakeSpan(want)).ok());
      EXPECT_EQ(std::memcmp(got.data(), want.data(), got.size() * 4), 0) << servers << " server(s)";
      EXPECT_TRUE(store.Shutdown().ok());
    });
    int64_t pulled = 0;
    for (const auto& s : result.server_stats) pulled += s.pulled_rows();
    EXPECT_EQ(pulled, static_cast<int64_t>(ids.size())) << servers << " server(s)";
  }
}

TEST(RemoteEmbeddingStore, CallerErrorsSendNothing) {
  const auto tables = Tables();
  auto result = testutil::RunPsJob(1, 1, tables, TestOptions(), [&](int, RemoteEmbeddingStore& store, comm::Communicator&) {
    std::vector<float> out(8);
    EXPECT_TRUE(absl::IsInvalidArgument(store.Lookup(2, {1}, absl::MakeSpan(out))));
    EXPECT_TRUE(absl::IsInvalidArgument(store.Lookup(0, {1, 2}, absl::MakeSpan(out))));
    std::vector<float> g(8, 0.0f);
    g[3] = std::numeric_limits<float>::infinity();
    absl::Status s = store.ApplyGradients(0, {1}, g);
    EXPECT_TRUE(absl::IsInvalidArgument(s));
    EXPECT_NE(std::string(s.message()).find("not finite"), std::string::npos);
    EXPECT_TRUE(absl::IsInvalidArgument(store.ApplyGradients(0, {1, 2}, g)));
    // Server-side errors come back naming the server.
    absl::Status save = store.Save("/nonexistent/t2d/dir");
    EXPECT_FALSE(save.ok());
    EXPECT_NE(std::string(save.message()).find("server rank 0"), std::string::npos) << save;
    absl::Status load = store.Load(::testing::TempDir());
    EXPECT_FALSE(load.ok());
    // Still usable afterwards: the failed push never counted as a round.
    std::vector<float> g2(8, 0.5f);
    ASSERT_TRUE(store.ApplyGradients(0, {1}, g2).ok());
    auto stats = store.Stats();
    ASSERT_TRUE(stats.ok());
    EXPECT_EQ((*stats)[0].step, 1);
    ASSERT_TRUE(store.Shutdown().ok());
  });
  EXPECT_TRUE(result.server_status[0].ok()) << result.server_status[0];
}

TEST(RemoteEmbeddingStore, SaveWithTwoServersLoadWithOneAndThree) {
  const auto tables = Tables();
  const std::string dir = ::testing::TempDir() + "/ps_save_2";
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  const auto probe = ProbeIds();
  std::vector<float> saved(probe.size() * 8);
  auto first = testutil::RunPsJob(2, 2, tables, TestOptions(), [&](int w, RemoteEmbeddingStore& store, comm::Communicator& comm) {
    for (int step = 0; step < 4; ++step) {
      const Batch b = MakeBatch(step, w, 0, 8);
      ASSERT_TRUE(store.ApplyGradients(0, b.ids, b.grads).ok());
      const Batch c = MakeBatch(step, w, 1, 3);
      ASSERT_TRUE(store.ApplyGradients(1, c.ids, c.grads).ok());
    }
    ASSERT_TRUE(comm.Barrier(Soon()).ok());
    if (w == 0) {
      ASSERT_TRUE(store.Save(dir).ok());
      ASSERT_TRUE(store.Lookup(0, probe, absl::MakeSpan(saved)).ok());
    }
    ASSERT_TRUE(comm.Barrier(Soon()).ok());
    ASSERT_TRUE(store.Shutdown().ok());
  });
  for (const auto& s : first.server_status) ASSERT_TRUE(s.ok()) << s;
  for (int servers : {1, 3}) {
    auto second = testutil::RunPsJob(servers, 1, tables, TestOptions(), [&](int, RemoteEmbeddingStore& store, comm::Communicator&) {
      // One table alone (the warm start of `init_from`): table 1 stays empty.
      ASSERT_TRUE(store.LoadTable(0, dir).ok());
      std::vector<float> rows0(saved.size());
      ASSERT_TRUE(store.Lookup(0, probe, absl::MakeSpan(rows0)).ok());
      EXPECT_EQ(std::memcmp(rows0.data(), saved.data(), rows0.size() * 4), 0) << servers << " servers";
      auto only = store.Stats();
      ASSERT_TRUE(only.ok());
      EXPECT_GT((*only)[0].rows, 0);
      EXPECT_EQ((*only)[1].rows, 0);
      EXPECT_TRUE(absl::IsInvalidArgument(store.LoadTable(2, dir)));
      ASSERT_TRUE(store.Load(dir).ok());
      std::vector<float> rows(saved.size());
      ASSERT_TRUE(store.Lookup(0, probe, absl::MakeSpan(rows)).ok());
      EXPECT_EQ(std::memcmp(rows.data(), saved.data(), rows.size() * 4), 0) << servers << " servers";
      // Optimizer state came along: one more step matches a local store loaded from the files.
      auto ref = *embedding::LocalEmbeddingStore::Create(tables);
      ASSERT_TRUE(ref->Load(dir).ok());
      const Batch b = MakeBatch(9, 0, 0, 8);
      ASSERT_TRUE(store.ApplyGradients(0, b.ids, b.grads).ok());
      const Batch d = Dedup(b, 8);
      ASSERT_TRUE(ref->ApplyGradients(0, d.ids, d.grads).ok());
      std::vector<float> want(rows.size());
      ASSERT_TRUE(store.Lookup(0, probe, absl::MakeSpan(rows)).ok());
      ASSERT_TRUE(ref->Lookup(0, probe, absl::MakeSpan(want)).ok());
      EXPECT_EQ(std::memcmp(rows.data(), want.data(), rows.size() * 4), 0) << servers << " servers";
      auto stats = store.Stats();
      ASSERT_TRUE(stats.ok());
      EXPECT_EQ((*stats)[0].rows, (*ref->Stats())[0].rows);
      ASSERT_TRUE(store.Shutdown().ok());
    });
    for (const auto& s : second.server_status) EXPECT_TRUE(s.ok()) << s;
  }
}

// ---------------------------------------------------------------------------------------------
// Stalls and dead peers: named errors within about the deadline, never a hang.

TEST(Failures, SilentServerIsNamedByTheWorker) {
  const auto tables = Tables();
  PsOptions options = TestOptions();
  options.timeout = absl::Milliseconds(200);
  options.idle_timeout = absl::Milliseconds(800);
  options.roles = comm::RoleAssignment{3, 2, 1};
  comm::InProcHub hub(3);  // rank 1 (server 1) never runs
  absl::Status server0, worker;
  testutil::SpawnThreads(2, [&](int i) {
    if (i == 0) {
      auto t = hub.Connect(0);
      auto store = *embedding::LocalEmbeddingStore::Create(tables, 0, 2);
      ShardServer server(t.get(), store.get(), options);
      server0 = server.Run();
    } else {
      auto t = hub.Connect(2);
      RemoteEmbeddingStore store(t.get(), tables, options);
      std::vector<int64_t> ids;
      for (int64_t id = 0; id < 20; ++id) ids.push_back(id);
      std::vector<float> rows(ids.size() * 8);
      const absl::Time start = absl::Now();
      worker = store.Lookup(0, ids, absl::MakeSpan(rows));
      EXPECT_LT(absl::Now() - start, absl::Seconds(2));
      EXPECT_FALSE(store.Lookup(0, ids, absl::MakeSpan(rows)).ok());  // broken from now on
    }
  });
  EXPECT_TRUE(absl::IsDeadlineExceeded(worker)) << worker;
  EXPECT_NE(std::string(worker.message()).find("no reply from world rank 1 (server 1)"), std::string::npos) << worker;
  EXPECT_TRUE(absl::IsDeadlineExceeded(server0)) << server0;
  EXPECT_NE(std::string(server0.message()).find("world rank 2 (worker 0) never shut down"), std::string::npos) << server0;
}

TEST(Failures, StalledWorkerIsNamedByTheServer) {
  const auto tables = Tables();
  PsOptions options = TestOptions();
  options.timeout = absl::Milliseconds(300);
  absl::Status worker0;
  auto result = testutil::RunPsJob(1, 2, tables, options, [&](int w, RemoteEmbeddingStore& store, comm::Communicator&) {
    if (w == 1) {
      absl::SleepFor(absl::Seconds(1));  // never pushes round 1
      return;
    }
    std::vector<float> g(8, 1.0f), rows(8);
    ASSERT_TRUE(store.ApplyGradients(0, {3}, g).ok());  // accepted: the round waits for worker 1
    worker0 = store.Lookup(0, {3}, absl::MakeSpan(rows));
  });
  const absl::Status& s = result.server_status[0];
  EXPECT_TRUE(absl::IsDeadlineExceeded(s)) << s;
  EXPECT_NE(std::string(s.message()).find("no push from world rank 2 (worker 1)"), std::string::npos) << s;
  EXPECT_FALSE(worker0.ok());
}

TEST(Failures, RoundThatCanNeverCompleteIsReported) {
  const auto tables = Tables();
  auto result = testutil::RunPsJob(1, 2, tables, TestOptions(), [&](int w, RemoteEmbeddingStore& store, comm::Communicator& comm) {
    if (w == 1) {
      ASSERT_TRUE(store.Shutdown().ok());
      ASSERT_TRUE(comm.Barrier(Soon()).ok());
      return;
    }
    ASSERT_TRUE(comm.Barrier(Soon()).ok());
    std::vector<float> g(8, 1.0f);
    (void)store.ApplyGradients(0, {3}, g);
  });
  const absl::Status& s = result.server_status[0];
  EXPECT_TRUE(absl::IsFailedPrecondition(s)) << s;
  EXPECT_NE(std::string(s.message()).find("worker rank 2 shut down without pushing it"), std::string::npos) << s;
}

// A sync push returns before its acknowledgement (the servers hold later pulls until it is
// applied). A server that refuses it must fail the worker's next call, promptly and with the
// server's reason, not let it succeed as if the round had counted: here the worker's "tag"
// table has dim 4 where the server's has 3.
TEST(Failures, RefusedSyncPushFailsTheNextCall) {
  const auto tables = Tables();
  auto worker_tables = tables;
  worker_tables[1].set_dim(4);
  PsOptions options = TestOptions();
  options.timeout = absl::Milliseconds(500);
  options.idle_timeout = absl::Milliseconds(500);
  options.roles = comm::RoleAssignment{2, 1, 1};
  comm::InProcHub hub(2);
  absl::Status push, pull;
  testutil::SpawnThreads(2, [&](int rank) {
    auto transport = hub.Connect(rank);
    if (rank == 0) {
      auto local = embedding::LocalEmbeddingStore::Create(tables, 0, 1);
      ASSERT_TRUE(local.ok()) << local.status();
      ShardServer server(transport.get(), local->get(), options);
      (void)server.Run();  // ends at its idle timeout: the worker never shuts down cleanly
      return;
    }
    RemoteEmbeddingStore store(transport.get(), worker_tables, options);
    push = store.ApplyGradients(1, {5}, std::vector<float>(4, 1.0f));
    std::vector<float> rows(8);
    const absl::Time start = absl::Now();
    pull = store.Lookup(0, {1}, absl::MakeSpan(rows));
    EXPECT_LT(absl::Now() - start, options.timeout) << "waited for a reply that could not come";
  });
  EXPECT_TRUE(push.ok()) << push;
  EXPECT_TRUE(absl::IsInvalidArgument(pull)) << pull;
  EXPECT_NE(std::string(pull.message()).find("server rank 0: PUSH"), std::string::npos) << pull;
  EXPECT_NE(std::string(pull.message()).find("has dim 3"), std::string::npos) << pull;
}

TEST(Failures, GonePeerIsUnavailable) {
  const auto tables = Tables();
  PsOptions options = TestOptions();
  options.roles = comm::RoleAssignment{2, 1, 1};
  comm::InProcHub hub(2);
  hub.MarkGone(0);
  auto t = hub.Connect(1);
  RemoteEmbeddingStore store(t.get(), tables, options);
  std::vector<float> rows(8);
  absl::Status s = store.Lookup(0, {1}, absl::MakeSpan(rows));
  EXPECT_TRUE(absl::IsUnavailable(s)) << s;
  EXPECT_NE(std::string(s.message()).find("rank 0"), std::string::npos) << s;
}

}  // namespace
}  // namespace t2d::ps
