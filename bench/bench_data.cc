// Data pipeline figures: prepare ML-1M (and ML-100k) from ../shared/data, reader throughput
// with n = 50, and generator throughput. A plain executable that prints the figures and the
// machine; never asserted in CI.
//
// Usage: bench_data [shared_data_dir] [work_dir]
//   shared_data_dir defaults to <source>/../shared/data, work_dir to /tmp/t2d-bench-data.

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>

#include "data/prepare.h"
#include "data/sample_reader.h"

namespace {

using t2d::config::DataConfig;
using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

void PrintMachine() {
  std::string model = "unknown";
  std::ifstream cpu("/proc/cpuinfo");
  std::string line;
  while (std::getline(cpu, line)) {
    if (line.rfind("model name", 0) == 0) {
      model = line.substr(line.find(':') + 2);
      break;
    }
  }
  std::printf("machine: %u hardware threads, %s\n", std::thread::hardware_concurrency(), model.c_str());
}

// Reads one epoch of `split` with n = 50 on one thread; returns samples/s.
double ReaderThroughput(const std::string& dir, const std::string& split, int shuffle_buffer, int64_t* samples) {
  t2d::data::ReaderOptions o;
  o.split = split;
  o.batch_size = 512;
  o.max_seq_len = 50;
  o.shuffle_buffer = shuffle_buffer;
  auto r = t2d::data::SampleReader::Open(dir, o);
  if (!r.ok()) {
    std::printf("reader: %s\n", std::string(r.status().message()).c_str());
    return 0;
  }
  t2d::data::SampleBatch b;
  int64_t n = 0;
  int64_t checksum = 0;
  const auto t0 = Clock::now();
  while (true) {
    auto more = (*r)->Next(&b);
    if (!more.ok() || !*more) break;
    n += b.size;
    checksum += b.history_id[0] + b.target_id[b.size - 1];
  }
  const double s = Seconds(t0);
  *samples = n;
  if (checksum == 42) std::printf(" ");  // keep the loop observable
  return static_cast<double>(n) / s;
}

bool PrepareAndReport(const std::string& name, const DataConfig& job, int repeats) {
  double best = 1e30;
  t2d::data::PrepareSummary summary;
  for (int i = 0; i < repeats; ++i) {
    const auto t0 = Clock::now();
    auto s = t2d::data::Prepare(job, true);
    const double took = Seconds(t0);
    if (!s.ok()) {
      std::printf("%s: prepare failed: %s\n", name.c_str(), std::string(s.status().message()).c_str());
      return false;
    }
    best = std::min(best, took);
    summary = *s;
  }
  std::printf("\n== %s (prepare: best of %d = %.3f s) ==\n%s\n", name.c_str(), repeats, best,
              t2d::data::FormatSummary(summary).c_str());
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string shared = argc > 1 ? argv[1] : std::string(T2D_SOURCE_DIR) + "/../shared/data";
  const std::string work = argc > 2 ? argv[2] : "/tmp/t2d-bench-data";
  std::filesystem::create_directories(work);
  PrintMachine();

  if (std::filesystem::exists(shared + "/ml-1m/ml-1m_sequences.txt.gz")) {
    DataConfig job;
    DataConfig* c = &job;
    c->set_source(DataConfig::ML1M_SEQUENCES);
    c->add_input_paths(shared + "/ml-1m/ml-1m_sequences.txt.gz");
    c->set_item_path(shared + "/ml-1m/movies.dat");
    c->set_dataset_dir(work + "/ml1m");
    c->set_num_shards(8);
    if (PrepareAndReport("ML-1M sequences, LAST_ITEM, n=50, k=10, 8 shards", job, 3)) {
      for (int buffer : {0, 10000}) {
        int64_t n = 0;
        const double rate = ReaderThroughput(c->dataset_dir(), "train", buffer, &n);
        std::printf("reader ML-1M train, n=50, batch 512, shuffle_buffer %d, 1 thread: %lld samples in one epoch, "
                    "%.0f samples/s\n", buffer, static_cast<long long>(n), rate);
      }
    }
    c->set_split(DataConfig::PAPER);
    c->set_valid_user_fraction(0.1);
    PrepareAndReport("ML-1M sequences, PAPER (80/10/10 users, m=10)", job, 1);
    DataConfig ratings;
    DataConfig* r = &ratings;
    r->set_source(DataConfig::MOVIELENS_DAT);
    r->add_input_paths(shared + "/ml-1m/ratings_users1-2999.dat.gz");
    r->set_item_path(shared + "/ml-1m/movies.dat");
    r->set_dataset_dir(work + "/ml1m-ratings");
    r->set_session_mode(DataConfig::TIME_GAP);
    PrepareAndReport("ML-1M ratings.dat users 1-2999 (gzip), TIME_GAP sessions", ratings, 1);
  } else {
    std::printf("ML-1M: %s absent, skipped\n", shared.c_str());
  }
  if (std::filesystem::exists(shared + "/ml-100k/u.data")) {
    DataConfig job;
    DataConfig* c = &job;
    c->set_source(DataConfig::MOVIELENS_100K);
    c->add_input_paths(shared + "/ml-100k/u.data");
    c->set_item_path(shared + "/ml-100k/u.item");
    c->set_dataset_dir(work + "/ml100k");
    PrepareAndReport("ML-100k, LAST_ITEM", job, 3);
  }

  // Generator: 1 thread and all threads.
  for (int threads : {1, 0}) {
    DataConfig job;
    DataConfig* c = &job;
    c->set_source(DataConfig::SYNTHETIC);
    c->set_dataset_dir(work + "/synthetic");
    c->set_num_shards(8);
    c->set_session_mode(DataConfig::TIME_GAP);
    c->mutable_generator()->set_num_users(200000);
    c->mutable_generator()->set_num_items(10000000);
    c->mutable_generator()->set_num_interests(1000);
    c->mutable_generator()->set_num_threads(threads);
    const auto t0 = Clock::now();
    auto s = t2d::data::Prepare(job, true);
    const double took = Seconds(t0);
    if (!s.ok()) {
      std::printf("generator failed: %s\n", std::string(s.status().message()).c_str());
      return 1;
    }
    std::printf("\n== generator, %s, 200k users, 1e7 items ==\n%s\ngenerator throughput: %.0f interactions/s "
                "(%lld interactions + 1e7 catalogue items in %.2f s)\n",
                threads == 1 ? "1 thread" : "all threads", t2d::data::FormatSummary(*s).c_str(),
                static_cast<double>(s->interactions()) / took, static_cast<long long>(s->interactions()), took);
  }
  int64_t n = 0;
  const double rate = ReaderThroughput(work + "/synthetic", "train", 10000, &n);
  std::printf("reader synthetic train, n=50, batch 512, shuffle_buffer 10000, 1 thread: %lld samples, %.0f samples/s\n",
              static_cast<long long>(n), rate);
  std::filesystem::remove_all(work);
  return 0;
}
