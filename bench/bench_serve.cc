// Latency and throughput of `t2diff serve` (issue: "Serving that agrees with training"), at the
// authors' size (D = 4, n = 50, k = 10, T = 50 reverse steps, 3,706 items, random weights):
//   1. the user tower alone, in process (serving::Bundle, one query per call): p50/p99;
//   2. the server under a closed-loop load generator: 1, 8 and 64 TCP clients, each sending a
//      request (a history of 50 items with times) and waiting for its reply before the next;
//      p50/p99 latency per request and requests/s, with the server on one torch thread.
// The bundle is written to a temporary folder; the server is the t2diff binary given, started as
// `t2diff serve --port 0 --no-stdin --threads 1`. Prints figures and the machine; asserts nothing.
// Usage: bench_serve T2DIFF [--quick | --tower-only] (--tower-only: part 1 alone, 20,000 queries,
// for profiling)
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "bench/bench_util.h"
#include "configs/config_loader.h"
#include "configs/job_options.h"
#include "model/model.h"
#include "serving/bundle.h"
#include "serving/bundle_writer.h"
#include "serving/protocol.h"

namespace t2d {
namespace {

using Clock = std::chrono::steady_clock;
constexpr int64_t kItems = 3706, kLen = 50;

double Ms(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double, std::milli>(b - a).count(); }
using bench::Percentile;

void Die(const std::string& what) {
  std::fprintf(stderr, "bench_serve: %s\n", what.c_str());
  std::exit(1);
}

// The authors' size: item_id and item_tag tables of width 2 (D = 4), n = 50, k = 10, T = 50.
void WriteAuthorsBundle(const std::string& dir) {
  auto job = config::ParseJobConfig(R"(
      tables { name: "item_id" dim: 2 } tables { name: "item_tag" dim: 2 }
      data { dataset_dir: "unused" max_seq_len: 50 session_len: 10 }
      model { diffusion_steps: 50 })", "bench.textproto");
  if (!job.ok()) Die(std::string(job.status().message()));
  auto model = model::Model::Create(job->model(), *config::ModelDimsOf(*job));
  if (!model.ok()) Die(std::string(model.status().message()));
  std::mt19937 rng(1);
  std::normal_distribution<float> normal(0, 0.1f);
  for (float& p : (*model)->DenseParameters()) p += normal(rng);
  const int64_t e = (*model)->output_dim();
  std::vector<int64_t> ids(kItems), tags(kItems), offsets(kItems + 1);
  std::iota(ids.begin(), ids.end(), 1);
  for (int64_t i = 0; i < kItems; ++i) tags[static_cast<size_t>(i)] = 1 + i % 18;
  std::iota(offsets.begin(), offsets.end(), 0);
  std::vector<float> vectors(static_cast<size_t>(kItems * e)), id_rows(static_cast<size_t>(kItems * 2)), tag_rows(36);
  for (auto* v : {&vectors, &id_rows, &tag_rows}) {
    for (float& x : *v) x = normal(rng);
  }
  std::vector<int64_t> tag_keys(18);
  std::iota(tag_keys.begin(), tag_keys.end(), 1);
  data::DatasetManifest dataset;
  dataset.set_window(50);
  dataset.set_session_len(10);
  dataset.set_session_mode("TIME_GAP");
  dataset.set_session_gap_s(1800);
  dataset.set_has_timestamps(true);
  dataset.set_max_tags_per_item(1);
  serving::BundleContents c;
  c.job = &*job;
  c.dataset = &dataset;
  c.model = model->get();
  c.item_ids = ids;
  c.item_vectors = vectors;
  c.vector_dim = e;
  c.id_keys = ids;
  c.id_rows = id_rows;
  c.id_dim = 2;
  c.tag_keys = tag_keys;
  c.tag_rows = tag_rows;
  c.tag_dim = 2;
  c.item_tag_offsets = offsets;
  c.item_tags = tags;
  if (auto s = serving::WriteBundle(dir, c); !s.ok()) Die(std::string(s.message()));
}

// Request i: user i, 50 items with times 60 s apart (a few sessions), k = 10.
std::string RequestLine(int i) {
  std::mt19937 rng(static_cast<unsigned>(i));
  std::string items, times;
  int64_t t = 1'000'000;
  for (int64_t j = 0; j < kLen; ++j) {
    t += (j % 12 == 11) ? 4000 : 60;
    absl::StrAppend(&items, j ? "," : "", 1 + rng() % kItems);
    absl::StrAppend(&times, j ? "," : "", t);
  }
  return absl::StrCat(R"({"id":)", i, R"(,"user":)", i, R"(,"items":[)", items, R"(],"times":[)", times, R"(],"k":10})", "\n");
}

int Connect(int port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) Die(absl::StrCat("connect: ", std::strerror(errno)));
  const int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  return fd;
}

// One closed-loop client: `n` requests, each latency appended to `out`.
void Client(int port, int first, int n, std::vector<double>* out) {
  const int fd = Connect(port);
  std::string buf;
  char chunk[65536];
  for (int i = 0; i < n; ++i) {
    const std::string line = RequestLine(first + i);
    const auto t0 = Clock::now();
    if (::send(fd, line.data(), line.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(line.size())) Die("send");
    size_t nl;
    while ((nl = buf.find('\n')) == std::string::npos) {
      const ssize_t r = ::recv(fd, chunk, sizeof(chunk), 0);
      if (r <= 0) Die("recv: the server closed the connection");
      buf.append(chunk, static_cast<size_t>(r));
    }
    out->push_back(Ms(t0, Clock::now()));
    if (buf.compare(0, nl, "{\"error\"") == 0) Die("error reply: " + buf.substr(0, nl));
    buf.erase(0, nl + 1);
  }
  ::close(fd);
}

}  // namespace
}  // namespace t2d

int main(int argc, char** argv) {
  using namespace t2d;
  if (argc < 2) Die("usage: bench_serve T2DIFF [--quick]");
  const bool quick = argc > 2 && std::strcmp(argv[2], "--quick") == 0;
  const bool tower_only = argc > 2 && std::strcmp(argv[2], "--tower-only") == 0;
  at::set_num_threads(1);
  const std::string dir = (std::filesystem::temp_directory_path() / ("t2d_bench_serve_" + std::to_string(::getpid()))).string();
  WriteAuthorsBundle(dir);
  std::printf("machine: %s; bundle: authors' size (D=4 n=50 k=10 T=50, %lld items); requests: 50 items with times, k=10\n",
              bench::MachineDescription().c_str(), static_cast<long long>(kItems));

  // 1. The user tower (and exact search) alone, in process, one query per call.
  {
    auto bundle = serving::Bundle::Load(dir);
    if (!bundle.ok()) Die(std::string(bundle.status().message()));
    std::vector<double> tower, total;
    const int n = quick ? 300 : tower_only ? 20000 : 2000;
    for (int i = 0; i < n + 20; ++i) {
      auto request = serving::ParseRequest(RequestLine(i));
      const auto t0 = Clock::now();
      auto r = (*bundle)->TopK(request->queries[0].View());
      const auto t1 = Clock::now();
      if (!r.ok()) Die(std::string(r.status().message()));
      if (i >= 20) {
        tower.push_back(r->user_tower_ms);
        total.push_back(Ms(t0, t1));
      }
    }
    const double p99 = Percentile(tower, 0.99);
    std::printf("in process, 1 thread: user tower p50 %.3f ms p99 %.3f ms (target p99 <= 1 ms: %s); with exact search "
                "of %lld items p50 %.3f ms p99 %.3f ms (%d queries)\n",
                Percentile(tower, 0.5), p99, p99 <= 1.0 ? "met" : "missed", static_cast<long long>(kItems),
                Percentile(total, 0.5), Percentile(total, 0.99), n);
  }

  if (tower_only) {
    std::filesystem::remove_all(dir);
    return 0;
  }
  // 2. The server under 1, 8 and 64 closed-loop clients.
  int out_pipe[2];
  if (::pipe(out_pipe) != 0) Die("pipe");
  const pid_t child = ::fork();
  if (child == 0) {
    ::dup2(out_pipe[1], 2);
    ::execl(argv[1], argv[1], "serve", "--bundle", dir.c_str(), "--port", "0", "--no-stdin", "--threads", "1",
            "--max-connections", "128", static_cast<char*>(nullptr));
    std::_Exit(127);
  }
  ::close(out_pipe[1]);
  std::string err;
  int port = -1;
  char c;
  while (port < 0 && ::read(out_pipe[0], &c, 1) == 1) {
    err.push_back(c);
    const size_t at = err.find("listening on 127.0.0.1:");
    if (at != std::string::npos && c == '\n') port = std::atoi(err.c_str() + at + std::strlen("listening on 127.0.0.1:"));
  }
  if (port < 0) Die("the server did not start: " + err);
  std::thread drain([fd = out_pipe[0]] {  // keep the server's log pipe from filling up
    char b[4096];
    while (::read(fd, b, sizeof(b)) > 0) {
    }
  });
  for (int clients : {1, 8, 64}) {
    const int per_client = std::max(quick ? 5 : 20, (quick ? 300 : 2000) / clients);
    std::vector<std::vector<double>> lat(static_cast<size_t>(clients));
    std::vector<std::thread> threads;
    Client(port, 0, 10, &lat[0]);  // warm-up
    lat[0].clear();
    const auto t0 = Clock::now();
    for (int k = 0; k < clients; ++k) threads.emplace_back(Client, port, 1000 * (k + 1), per_client, &lat[static_cast<size_t>(k)]);
    for (auto& t : threads) t.join();
    const double seconds = Ms(t0, Clock::now()) / 1000.0;
    std::vector<double> all;
    for (const auto& l : lat) all.insert(all.end(), l.begin(), l.end());
    const double p99 = Percentile(all, 0.99);
    std::printf("serve over TCP, %2d closed-loop clients: p50 %7.3f ms  p99 %7.3f ms  %7.0f requests/s  (%zu requests%s)\n",
                clients, Percentile(all, 0.5), p99, static_cast<double>(all.size()) / seconds, all.size(),
                clients == 1 ? (p99 <= 1.0 ? "; p99 <= 1 ms: met" : "; p99 <= 1 ms: missed") : "");
  }
  ::kill(child, SIGTERM);
  int status = 0;
  ::waitpid(child, &status, 0);
  drain.join();
  std::printf("server stopped by SIGTERM: exit status %d\n", WIFEXITED(status) ? WEXITSTATUS(status) : -1);
  std::filesystem::remove_all(dir);
  return 0;
}
