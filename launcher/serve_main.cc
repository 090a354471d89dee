#include "launcher/serve_main.h"

#include <ATen/Parallel.h>
#include <arpa/inet.h>
#include <fcntl.h>
#include <glog/logging.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <iostream>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "serving/bundle.h"
#include "serving/protocol.h"
#include "serving/server.h"

namespace t2d::launcher {
namespace {

// Reads lines from a file descriptor with a cap on their length, until end of input or until
// `stop_fd` becomes readable (checked whenever no complete line is buffered).
class LineReader {
 public:
  enum Result { kLine, kTooLong, kEnd };
  LineReader(int fd, size_t max_bytes, int stop_fd) : fd_(fd), stop_fd_(stop_fd), max_(max_bytes) {}

  Result Next(std::string* line) {
    while (true) {
      const size_t nl = buf_.find('\n');
      if (nl != std::string::npos) {
        if (!discarding_ && nl > max_) {
          buf_.erase(0, nl + 1);
          return kTooLong;
        }
        const bool skipped = discarding_;
        if (!skipped) {
          line->assign(buf_, 0, nl);
          if (!line->empty() && line->back() == '\r') line->pop_back();
        }
        buf_.erase(0, nl + 1);
        discarding_ = false;
        if (!skipped) return kLine;
        continue;  // the tail of a refused line
      }
      if (discarding_) {
        buf_.clear();
      } else if (buf_.size() > max_) {
        // Refused now, before the rest is read: the rest of the line is skipped as it arrives.
        buf_.clear();
        discarding_ = true;
        return kTooLong;
      }
      if (eof_) {
        if (buf_.empty() || discarding_) return kEnd;
        line->swap(buf_);
        buf_.clear();
        return kLine;
      }
      pollfd fds[2] = {{fd_, POLLIN, 0}, {stop_fd_, POLLIN, 0}};
      if (::poll(fds, 2, -1) < 0) {
        if (errno == EINTR) continue;
        return kEnd;
      }
      if (fds[1].revents != 0) return kEnd;
      char chunk[65536];
      const ssize_t n = ::read(fd_, chunk, sizeof(chunk));
      if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
      if (n <= 0) {
        eof_ = true;
        continue;
      }
      buf_.append(chunk, static_cast<size_t>(n));
    }
  }

 private:
  const int fd_, stop_fd_;
  const size_t max_;
  std::string buf_;
  bool discarding_ = false, eof_ = false;
};

// A blocked write to a client ends when the server stops: it shuts the socket down.
bool WriteAll(int fd, const std::string& data, bool socket) {
  size_t done = 0;
  while (done < data.size()) {
    const ssize_t n = socket ? ::send(fd, data.data() + done, data.size() - done, MSG_NOSIGNAL)
                             : ::write(fd, data.data() + done, data.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {  // a non-blocking descriptor, full
      pollfd p{fd, POLLOUT, 0};
      ::poll(&p, 1, 1000);
      continue;
    }
    if (n <= 0) return false;
    done += static_cast<size_t>(n);
  }
  return true;
}

// Answers every line of `fd` until its end or the stop signal.
void ServeStream(serving::Server* server, int in_fd, int out_fd, bool socket, const ServeOptions& o, int stop_fd) {
  LineReader reader(in_fd, static_cast<size_t>(o.max_request_bytes), stop_fd);
  std::string line;
  while (true) {
    const LineReader::Result r = reader.Next(&line);
    if (r == LineReader::kEnd) return;
    std::string reply = r == LineReader::kTooLong
                            ? serving::ErrorReply("null", absl::StrCat("request: longer than the limit of ",
                                                                      o.max_request_bytes, " bytes; refused unread"))
                            : line.find_first_not_of(" \t") == std::string::npos ? std::string() : server->Handle(line);
    if (reply.empty()) continue;  // blank line
    reply.push_back('\n');
    if (!WriteAll(out_fd, reply, socket)) return;
  }
}

absl::StatusOr<int> Listen(const std::string& host, int port, int* bound_port) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* found = nullptr;
  const std::string service = std::to_string(port);
  if (int rc = ::getaddrinfo(host.c_str(), service.c_str(), &hints, &found); rc != 0) {
    return absl::InvalidArgumentError(absl::StrCat("--host ", host, ": ", ::gai_strerror(rc)));
  }
  std::string last_error = "no address";
  for (addrinfo* a = found; a != nullptr; a = a->ai_next) {
    const int fd = ::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
    if (fd < 0) continue;
    const int one = 1;
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (::bind(fd, a->ai_addr, a->ai_addrlen) == 0 && ::listen(fd, 128) == 0) {
      sockaddr_storage addr{};
      socklen_t len = sizeof(addr);
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
      *bound_port = addr.ss_family == AF_INET6 ? ntohs(reinterpret_cast<sockaddr_in6*>(&addr)->sin6_port)
                                               : ntohs(reinterpret_cast<sockaddr_in*>(&addr)->sin_port);
      ::freeaddrinfo(found);
      return fd;
    }
    last_error = std::strerror(errno);
    ::close(fd);
  }
  ::freeaddrinfo(found);
  return absl::UnavailableError(absl::StrCat("cannot listen on ", host, ":", port, ": ", last_error));
}

}  // namespace

int RunServe(const ServeOptions& o) {
  // Signals are taken by one thread (sigwait); every other thread, including those libtorch and
  // OpenMP start while the bundle loads, has them blocked: block them before anything starts.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  if (o.max_request_bytes < 64 || o.max_batch < 1 || o.max_connections < 1 || o.threads < 1 || o.port > 65535) {
    LOG(ERROR) << "serve: --max-request-bytes >= 64, --max-batch, --max-connections and --threads >= 1, --port <= 65535";
    return 1;
  }
  if (!o.read_stdin && o.port < 0) {
    LOG(ERROR) << "serve: --no-stdin needs --port (there would be nothing to answer)";
    return 1;
  }
  at::set_num_threads(o.threads);
  auto bundle = serving::Bundle::Load(o.bundle);
  if (!bundle.ok()) {
    LOG(ERROR) << bundle.status().message();
    return 1;
  }
  ::signal(SIGPIPE, SIG_IGN);
  int stop_pipe[2];
  if (::pipe2(stop_pipe, O_CLOEXEC) != 0) {
    LOG(ERROR) << "serve: pipe: " << std::strerror(errno);
    return 1;
  }
  int listener = -1, port = -1;
  if (o.port >= 0) {
    auto fd = Listen(o.host, o.port, &port);
    if (!fd.ok()) {
      LOG(ERROR) << fd.status().message();
      return 1;
    }
    listener = *fd;
  }
  serving::ServerOptions so;
  so.max_batch = o.max_batch;
  so.allow_updates = o.allow_updates;
  auto server = std::make_unique<serving::Server>(std::move(*bundle), so);
  std::atomic<bool> stopping{false};
  auto stop = [&] {
    if (!stopping.exchange(true)) {
      const char c = 's';
      (void)!::write(stop_pipe[1], &c, 1);
    }
  };
  std::atomic<bool> done{false};
  std::thread signal_thread([&] {
    const timespec tick{0, 200 * 1000 * 1000};
    while (!done.load()) {
      if (sigtimedwait(&signals, nullptr, &tick) > 0) {
        LOG(INFO) << "serve: stopping (signal)";
        stop();
      }
    }
  });
  const auto current = server->current();
  std::cerr << absl::StrFormat("serving %s: %d items, step %d, search %s", o.bundle, current->num_items(),
                               current->step(), current->search_kind());
  if (listener >= 0) std::cerr << absl::StrFormat("; listening on %s:%d", o.host, port);
  std::cerr << std::endl;
  std::thread stdin_thread;
  if (o.read_stdin) {
    stdin_thread = std::thread([&] {
      ServeStream(server.get(), 0, 1, false, o, stop_pipe[0]);
      if (listener < 0) stop();  // no TCP: the end of stdin is the end of the service
    });
  }
  std::mutex conn_mu;
  std::condition_variable conn_cv;
  int connections = 0;
  std::set<int> live;  // open client sockets, shut down when stopping
  if (listener >= 0) {
    while (true) {
      pollfd fds[2] = {{listener, POLLIN, 0}, {stop_pipe[0], POLLIN, 0}};
      if (::poll(fds, 2, -1) < 0) {
        if (errno == EINTR) continue;
        break;
      }
      if (fds[1].revents != 0) break;
      const int fd = ::accept4(listener, nullptr, nullptr, SOCK_CLOEXEC);
      if (fd < 0) {
        // Out of descriptors: the listener stays readable, so wait instead of spinning.
        if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) ::usleep(100 * 1000);
        continue;
      }
      std::unique_lock<std::mutex> lock(conn_mu);
      if (connections >= o.max_connections) {
        lock.unlock();
        WriteAll(fd, serving::ErrorReply("null", absl::StrCat("server: more than ", o.max_connections,
                                                              " connections; try again later")) + "\n", true);
        ::close(fd);
        continue;
      }
      ++connections;
      live.insert(fd);
      std::thread([&, fd] {
        ServeStream(server.get(), fd, fd, true, o, stop_pipe[0]);
        std::lock_guard<std::mutex> l(conn_mu);
        live.erase(fd);
        ::close(fd);
        --connections;
        conn_cv.notify_all();
      }).detach();
    }
    ::close(listener);
    std::unique_lock<std::mutex> lock(conn_mu);
    // Connections end after the request they are answering (their reads see the stop). A client
    // that does not read its replies keeps its thread in send(): after 5 seconds, its writes
    // are shut down too.
    for (int fd : live) ::shutdown(fd, SHUT_RD);
    if (!conn_cv.wait_for(lock, std::chrono::seconds(5), [&] { return connections == 0; })) {
      LOG(WARNING) << "serve: " << connections << " connection(s) not reading their replies; closing them";
      for (int fd : live) ::shutdown(fd, SHUT_RDWR);
      conn_cv.wait(lock, [&] { return connections == 0; });
    }
  } else {
    pollfd fd{stop_pipe[0], POLLIN, 0};
    while (::poll(&fd, 1, -1) < 0 && errno == EINTR) {
    }
  }
  if (stdin_thread.joinable()) stdin_thread.join();
  const auto stats = server->stats();
  server.reset();  // answers whatever is queued
  done = true;
  signal_thread.join();
  LOG(INFO) << "serve: stopped after " << stats.requests << " requests (" << stats.queries << " queries in "
            << stats.batches << " batches, " << stats.errors << " errors, " << stats.updates << " updates)";
  return 0;
}

int RunRetrieve(const RetrieveOptions& o) {
  auto bundle = serving::Bundle::Load(o.bundle);
  if (!bundle.ok()) {
    LOG(ERROR) << bundle.status().message();
    return 1;
  }
  std::string line = o.request;
  if (line.empty()) {
    auto ints = [](const std::string& text, const char* flag, std::vector<int64_t>* out) {
      for (absl::string_view tok : absl::StrSplit(text, absl::ByAnyChar(" ,"), absl::SkipEmpty())) {
        int64_t v;
        if (!absl::SimpleAtoi(tok, &v)) {
          LOG(ERROR) << flag << ": \"" << tok << "\" is not an integer";
          return false;
        }
        out->push_back(v);
      }
      return true;
    };
    std::vector<int64_t> items, times;
    if (!ints(o.history, "--history", &items) || !ints(o.times, "--times", &times)) return 1;
    nlohmann::ordered_json j;
    j["items"] = items;
    if (!times.empty()) j["times"] = times;
    if (o.time.has_value()) j["time"] = *o.time;
    if (o.user.has_value()) j["user"] = *o.user;
    if (o.seed.has_value()) j["seed"] = *o.seed;
    j["k"] = o.k;
    line = j.dump();
  }
  serving::ServerOptions so;
  so.allow_updates = false;
  serving::Server server(std::move(*bundle), so);
  const std::string reply = server.Handle(line);
  const nlohmann::json r = nlohmann::json::parse(reply);
  if (r.contains("error")) {
    LOG(ERROR) << r["error"].get<std::string>();
    return 1;
  }
  if (o.json) {
    std::cout << reply << std::endl;
    return 0;
  }
  const auto answers = r.contains("results") ? r["results"] : nlohmann::json::array({r});
  for (size_t q = 0; q < answers.size(); ++q) {
    const auto& a = answers[q];
    if (a.contains("error")) {
      std::cout << "query " << q << ": error: " << a["error"].get<std::string>() << "\n";
      continue;
    }
    const auto items = a["items"].get<std::vector<int64_t>>();
    const auto scores = a["scores"].get<std::vector<float>>();
    std::cout << "top " << items.size() << " of " << server.current()->num_items() << " items:\n";
    for (size_t i = 0; i < items.size(); ++i) {
      std::cout << absl::StrFormat("%3d  item %-12d score %.5f\n", i + 1, items[i], scores[i]);
    }
    std::cout << absl::StrFormat("latency: user tower %.2f ms, search %.2f ms\n", a["user_tower_ms"].get<double>(),
                                 a["search_ms"].get<double>());
  }
  return 0;
}

}  // namespace t2d::launcher
