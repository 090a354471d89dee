#include <glog/logging.h>
#include <gtest/gtest.h>

#include <cfloat>
#include <filesystem>
#include <limits>
#include <memory>
#include <vector>

#include "common/checksum.h"
#include "common/file_util.h"
#include "common/finite.h"
#include "common/hash.h"
#include "common/logging.h"
#include "common/process_memory.h"
#include "common/status_macros.h"

namespace t2d {
namespace {

TEST(Checksum, KnownValuesAndIncremental) {
  EXPECT_EQ(Crc32("123456789", 9), 0xCBF43926u);  // the CRC-32 check value
  EXPECT_EQ(Crc32("", 0), 0u);
  EXPECT_EQ(Crc32("6789", 4, Crc32("12345", 5)), 0xCBF43926u);
}

TEST(Hash, Mix64IsFixed) {
  // Part of the shard and row-initialisation contract: these values must never change.
  EXPECT_EQ(Mix64(0), 0xe220a8397b1dcdafULL);
  SplitMix64 rng(0);
  EXPECT_EQ(rng.Next(), 0xe220a8397b1dcdafULL);
  EXPECT_NE(HashCombine(1, 2), HashCombine(2, 1));
  SplitMix64 r(7);
  for (int i = 0; i < 1000; ++i) {
    const float f = r.NextFloat();
    ASSERT_GE(f, 0.0f);
    ASSERT_LT(f, 1.0f);
  }
}

absl::StatusOr<int> Half(int x) {
  if (x % 2 != 0) return absl::InvalidArgumentError("odd");
  return x / 2;
}
absl::Status Quarter(int x, int* out) {
  T2D_ASSIGN_OR_RETURN(int h, Half(x));
  T2D_ASSIGN_OR_RETURN(*out, Half(h));
  T2D_RETURN_IF_ERROR(absl::OkStatus());
  return absl::OkStatus();
}

TEST(Finite, FirstNonFiniteFindsTheFirstNaNOrInfinity) {
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  EXPECT_EQ(FirstNonFinite({}), 0u);
  // Extremes that are finite: the largest, the smallest subnormal, negative zero.
  std::vector<float> v(700, 1.0f);
  v[3] = FLT_MAX;
  v[4] = -FLT_MAX;
  v[5] = std::numeric_limits<float>::denorm_min();
  v[6] = -0.0f;
  EXPECT_EQ(FirstNonFinite(v), 700u);
  // Each kind of non-finite value at block edges (blocks of 256) and inside; the first one wins.
  for (float bad : {nan, -nan, inf, -inf}) {
    for (size_t at : {size_t{0}, size_t{255}, size_t{256}, size_t{511}, size_t{600}, size_t{699}}) {
      std::vector<float> w = v;
      w[at] = bad;
      if (at + 1 < w.size()) w[w.size() - 1] = nan;  // a later one does not hide it
      EXPECT_EQ(FirstNonFinite(w), at) << bad << " at " << at;
    }
  }
  // A span that starts mid-array: positions count from its start.
  std::vector<float> w = v;
  w[300] = inf;
  EXPECT_EQ(FirstNonFinite(absl::MakeConstSpan(w).subspan(100)), 200u);
}

TEST(StatusMacros, PropagateErrors) {
  int q = 0;
  EXPECT_TRUE(Quarter(8, &q).ok());
  EXPECT_EQ(q, 2);
  EXPECT_EQ(Quarter(6, &q).code(), absl::StatusCode::kInvalidArgument);
}

TEST(FileUtil, AtomicWriteAndRead) {
  const auto path = (std::filesystem::temp_directory_path() / "t2d_file_util_test").string();
  ASSERT_TRUE(WriteFileAtomic(path, std::string("a\0b", 3)).ok());
  auto back = ReadFileToString(path);
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(*back, std::string("a\0b", 3));
  EXPECT_FALSE(std::filesystem::exists(path + ".tmp"));
  std::filesystem::remove(path);
  EXPECT_EQ(ReadFileToString(path).status().code(), absl::StatusCode::kNotFound);
  EXPECT_FALSE(WriteFileAtomic("/nonexistent-dir/x", "y").ok());
}

TEST(Logging, TagCarriesRoleAndRank) {
  LoggingOptions options;
  options.role = "worker";
  options.rank = 3;
  InitLogging("common_test", options);
  EXPECT_EQ(LogTag(), "worker 3");
  testing::internal::CaptureStderr();
  LOG(INFO) << "hello";
  const std::string out = testing::internal::GetCapturedStderr();
  EXPECT_NE(out.find("[worker 3]"), std::string::npos) << out;
  EXPECT_NE(out.find("hello"), std::string::npos);
}

}  // namespace
}  // namespace t2d

// What the servers report: touching 64 MiB shows in the resident size, and the peak is never
// below the current size.
TEST(ProcessMemory, TouchedPagesShowInTheResidentSize) {
  auto before = t2d::ReadProcessMemory();
  ASSERT_TRUE(before.ok()) << before.status();
  EXPECT_GT(before->rss_bytes, 0);
  constexpr size_t kBytes = size_t{64} << 20;
  std::unique_ptr<char[]> block(new char[kBytes]);
  volatile char* pages = block.get();  // volatile: every store happens, so every page is touched
  for (size_t i = 0; i < kBytes; i += 4096) pages[i] = static_cast<char>(i);
  auto after = t2d::ReadProcessMemory();
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_GE(after->rss_bytes - before->rss_bytes, static_cast<int64_t>(kBytes) * 7 / 8);
  EXPECT_GE(after->peak_rss_bytes, after->rss_bytes);
  EXPECT_EQ(block[4096], static_cast<char>(4096));
}
