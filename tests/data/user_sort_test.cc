// The external sort behind `t2diff prepare` (data/user_sort.h) and prepare's bounded-memory path:
// the sorted order equals a stable sort of the whole log whatever the buffer, run files are
// removed, damaged runs are errors, and a data set prepared through many runs is byte-identical
// to one prepared in memory.
#include "data/user_sort.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <random>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "data/prepare.h"
#include "tests/data/test_util.h"

namespace t2d::data {
namespace {

using config::DataConfig;
using testing::TempDir;
using testing::WriteText;
namespace fs = std::filesystem;

struct Row {
  Interaction x;
  bool positive;
};

// Few users, few distinct times: many ties, which the order must break by input position.
std::vector<Row> RandomRows(int n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<Row> rows;
  for (int i = 0; i < n; ++i) {
    const int64_t user = static_cast<int64_t>(rng() % 97) - 40;  // negative ids too
    rows.push_back({{user, static_cast<int64_t>(i), static_cast<int64_t>(rng() % 5)}, rng() % 7 != 0});
  }
  return rows;
}

// What ForEachUser hands over, flattened: "user:rows:item@time,item@time;".
std::string Expected(std::vector<Row> rows, bool by_time) {
  std::stable_sort(rows.begin(), rows.end(), [&](const Row& a, const Row& b) {
    if (a.x.user != b.x.user) return a.x.user < b.x.user;
    return by_time && a.x.time < b.x.time;
  });
  std::ostringstream out;
  for (size_t i = 0; i < rows.size();) {
    size_t j = i;
    std::string pos;
    for (; j < rows.size() && rows[j].x.user == rows[i].x.user; ++j) {
      if (rows[j].positive) absl::StrAppend(&pos, rows[j].x.item, "@", rows[j].x.time, ",");
    }
    out << rows[i].x.user << ":" << j - i << ":" << pos << ";";
    i = j;
  }
  return out.str();
}

absl::StatusOr<std::string> Sorted(UserRowSorter* sorter) {
  std::ostringstream out;
  absl::Status s = sorter->ForEachUser([&](int64_t user, absl::Span<const Interaction> pos, int64_t rows) {
    out << user << ":" << rows << ":";
    for (const auto& x : pos) {
      EXPECT_EQ(x.user, user);
      out << x.item << "@" << x.time << ",";
    }
    out << ";";
    return absl::OkStatus();
  });
  if (!s.ok()) return s;
  return out.str();
}

int FilesIn(const std::string& dir) {
  return static_cast<int>(std::distance(fs::directory_iterator(dir), fs::directory_iterator()));
}

TEST(UserRowSorterTest, ManyRunsGiveTheStableOrderOfTheWholeLog) {
  TempDir dir;
  const std::vector<Row> rows = RandomRows(5000, 1);
  for (bool by_time : {true, false}) {
    const std::string expected = Expected(rows, by_time);
    // 64 rows a run (80 runs), 1000 (5 runs) and all in memory.
    for (int64_t buffer_rows : {64, 1000, 100000}) {
      SCOPED_TRACE(absl::StrCat("by_time ", by_time, ", buffer ", buffer_rows, " rows"));
      auto sorter = UserRowSorter::Create(dir.path(), buffer_rows * 32, by_time);
      ASSERT_TRUE(sorter.ok()) << sorter.status();
      for (const Row& r : rows) ASSERT_TRUE((*sorter)->Add(r.x, r.positive).ok());
      ASSERT_TRUE((*sorter)->Finish().ok());
      EXPECT_EQ((*sorter)->rows(), 5000);
      EXPECT_EQ((*sorter)->runs(), buffer_rows == 64 ? 79 : buffer_rows == 1000 ? 5 : 0);
      EXPECT_EQ(FilesIn(dir.path()), (*sorter)->runs());
      auto got = Sorted(sorter->get());
      ASSERT_TRUE(got.ok()) << got.status();
      EXPECT_EQ(*got, expected);
      got = Sorted(sorter->get());  // a second pass reads the runs again
      ASSERT_TRUE(got.ok()) << got.status();
      EXPECT_EQ(*got, expected);
      sorter->reset();
      EXPECT_EQ(FilesIn(dir.path()), 0) << "run files are removed with the sorter";
    }
  }
}

TEST(UserRowSorterTest, ErrorsNameTheRunFile) {
  TempDir dir;
  // A buffer too small for one row.
  EXPECT_TRUE(absl::IsInvalidArgument(UserRowSorter::Create(dir.path(), 31, true).status()));

  // A scratch folder that does not exist: the first spill fails, naming its file.
  auto sorter = UserRowSorter::Create(dir.File("missing"), 64, true);
  ASSERT_TRUE(sorter.ok());
  ASSERT_TRUE((*sorter)->Add({1, 2, 3}, true).ok());
  ASSERT_TRUE((*sorter)->Add({1, 2, 3}, true).ok());
  absl::Status s = (*sorter)->Add({1, 2, 3}, true);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find(dir.File("missing")), std::string::npos) << s;

  // A run cut short after it was written: DataLoss naming it, not a silently shorter log.
  sorter = UserRowSorter::Create(dir.path(), 64 * 32, true);
  ASSERT_TRUE(sorter.ok());
  for (const Row& r : RandomRows(200, 2)) ASSERT_TRUE((*sorter)->Add(r.x, r.positive).ok());
  ASSERT_TRUE((*sorter)->Finish().ok());
  ASSERT_EQ((*sorter)->runs(), 4);
  const fs::path run = fs::directory_iterator(dir.path())->path();
  fs::resize_file(run, fs::file_size(run) - 32);
  auto got = Sorted(sorter->get());
  ASSERT_FALSE(got.ok());
  EXPECT_TRUE(absl::IsDataLoss(got.status())) << got.status();
  EXPECT_NE(got.status().message().find(run.filename().string()), std::string::npos) << got.status();

  // An error from the callback ends the pass and comes back.
  sorter = UserRowSorter::Create(dir.path(), 1 << 20, true);
  ASSERT_TRUE(sorter.ok());
  ASSERT_TRUE((*sorter)->Add({1, 2, 3}, true).ok());
  ASSERT_TRUE((*sorter)->Add({2, 2, 3}, true).ok());
  EXPECT_FALSE((*sorter)->ForEachUser([](int64_t, absl::Span<const Interaction>, int64_t) {
                           return absl::OkStatus();
                         }).ok())
      << "ForEachUser before Finish";
  ASSERT_TRUE((*sorter)->Finish().ok());
  EXPECT_FALSE((*sorter)->Add({3, 2, 3}, true).ok()) << "Add after Finish";
  int calls = 0;
  s = (*sorter)->ForEachUser([&](int64_t, absl::Span<const Interaction>, int64_t) {
    ++calls;
    return absl::CancelledError("stop");
  });
  EXPECT_TRUE(absl::IsCancelled(s)) << s;
  EXPECT_EQ(calls, 1);
}

std::string WriteValues(const std::string& path, const std::vector<int64_t>& v) {
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(v.data()), static_cast<std::streamsize>(v.size() * sizeof(int64_t)));
  return path;
}

TEST(KthSmallestInFileTest, MatchesNthElement) {
  TempDir dir;
  std::mt19937_64 rng(3);
  std::vector<int64_t> v;
  for (int i = 0; i < 20000; ++i) {
    switch (rng() % 4) {
      case 0: v.push_back(static_cast<int64_t>(rng())); break;     // anywhere in the range, signs mixed
      case 1: v.push_back(1600000000 + static_cast<int64_t>(rng() % 1000)); break;  // timestamps, many ties
      case 2: v.push_back(-static_cast<int64_t>(rng() % 50)); break;
      default: v.push_back(i % 2 ? std::numeric_limits<int64_t>::max() : std::numeric_limits<int64_t>::min());
    }
  }
  const std::string path = WriteValues(dir.File("v.bin"), v);
  std::vector<int64_t> sorted = v;
  std::sort(sorted.begin(), sorted.end());
  const int64_t n = static_cast<int64_t>(v.size());
  for (int64_t k : std::vector<int64_t>{0, 1, n / 4, n / 2, 8000, 16000, n - 2, n - 1}) {
    auto got = KthSmallestInFile(path, n, k);
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(*got, sorted[static_cast<size_t>(k)]) << "k = " << k;
  }
  // Hand-checked: {5, -3, 5, 0} sorted is {-3, 0, 5, 5}.
  const std::string small = WriteValues(dir.File("small.bin"), {5, -3, 5, 0});
  EXPECT_EQ(*KthSmallestInFile(small, 4, 0), -3);
  EXPECT_EQ(*KthSmallestInFile(small, 4, 1), 0);
  EXPECT_EQ(*KthSmallestInFile(small, 4, 3), 5);
  EXPECT_TRUE(absl::IsInvalidArgument(KthSmallestInFile(small, 4, 4).status()));
  auto short_file = KthSmallestInFile(small, 5, 1);
  EXPECT_TRUE(absl::IsDataLoss(short_file.status())) << short_file.status();
  EXPECT_NE(short_file.status().message().find("small.bin"), std::string::npos);
}

// The scratch file GLOBAL_TIME's quantiles read: written, selected from, removed; a folder that
// does not exist is an error naming the file.
TEST(KthSmallestInFileTest, Int64SpillFeedsItAndCleansUp) {
  TempDir dir;
  {
    auto spill = Int64Spill::Create(dir.File("times.tmp"));
    ASSERT_TRUE(spill.ok()) << spill.status();
    for (int64_t v : {7, -2, 7, 40}) ASSERT_TRUE((*spill)->Add(v).ok());
    ASSERT_TRUE((*spill)->Close().ok());
    EXPECT_EQ((*spill)->count(), 4);
    EXPECT_EQ(*KthSmallestInFile((*spill)->path(), 4, 2), 7);
    EXPECT_FALSE((*spill)->Add(1).ok()) << "Add after Close";
  }
  EXPECT_EQ(FilesIn(dir.path()), 0);
  auto missing = Int64Spill::Create(dir.File("no/such/folder/times.tmp"));
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find("times.tmp"), std::string::npos) << missing.status();
}

std::string ReadAll(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// The same raw CSV prepared with a 1 MiB sort buffer (70,000 rows: 3 runs on disk) and with the
// default (all in memory) gives byte-identical sample files and the same manifest, under every
// split protocol (PAPER and GLOBAL_TIME read the sorted log twice).
TEST(PrepareExternalSortTest, DataSetDoesNotDependOnTheBuffer) {
  TempDir dir;
  std::mt19937 rng(5);
  std::string csv = "user,item,time,rating\n";
  for (int i = 0; i < 70000; ++i) {
    absl::StrAppend(&csv, rng() % 3000, ",", 1 + rng() % 500, ",", 1000 + rng() % 50000, ",", rng() % 5, "\n");
  }
  const std::string input = WriteText(dir.File("log.csv"), csv);
  for (auto split : {DataConfig::LAST_ITEM, DataConfig::PAPER, DataConfig::GLOBAL_TIME}) {
    SCOPED_TRACE(DataConfig::SplitProtocol_Name(split));
    std::string manifests[2];
    std::map<std::string, std::string> files[2];
    for (int big = 0; big < 2; ++big) {
      DataConfig c;
      c.set_source(DataConfig::CSV);
      c.add_input_paths(input);
      c.mutable_csv()->set_user_column("user");
      c.mutable_csv()->set_item_column("item");
      c.mutable_csv()->set_time_column("time");
      c.mutable_csv()->set_label_column("rating");
      c.set_min_rating(1);  // some rows are filtered, some users may have none
      c.set_min_seq_len(3);
      c.set_max_seq_len(20);
      c.set_num_shards(3);
      c.set_split(split);
      c.set_dataset_dir(dir.File("set"));  // one folder: the data set id depends on it
      if (!big) c.set_prepare_buffer_mb(1);
      auto summary = Prepare(c, true);
      ASSERT_TRUE(summary.ok()) << summary.status();
      EXPECT_EQ(summary->rows_read(), 70000);
      EXPECT_GT(summary->rows_filtered(), 0);
      for (const auto& e : fs::directory_iterator(c.dataset_dir())) {
        const std::string name = e.path().filename().string();
        EXPECT_EQ(name.find(kScratchPrefix), std::string::npos) << name << " was left behind";
        if (name == kManifestFile) {
          auto m = ReadManifest(c.dataset_dir());
          ASSERT_TRUE(m.ok());
          EXPECT_EQ(m->summary().sort_runs(), big ? 0 : 3);
          m->mutable_summary()->clear_seconds();
          m->mutable_summary()->clear_sort_runs();
          manifests[big] = m->DebugString();
        } else {
          files[big][name] = ReadAll(e.path());
        }
      }
    }
    EXPECT_NE(manifests[0], "");
    EXPECT_EQ(manifests[0], manifests[1]);
    EXPECT_EQ(files[0].size(), 3u * 3u + 1u);
    EXPECT_TRUE(files[0] == files[1]) << "sample files differ";
  }
}

}  // namespace
}  // namespace t2d::data
