#pragma once
// `t2diff serve` and `t2diff retrieve`: the process around serving::Server (protocol:
// serving/protocol.h, docs/serving.md). Called from launcher/main.cc only.
//
// serve: loads a bundle once and answers JSON request lines from stdin (replies on stdout) and,
// with --port, from TCP clients on --host (127.0.0.1 unless told otherwise), one thread per
// connection, every connection's queries batched together through the user tower. A request
// line longer than max_request_bytes is refused as soon as the cap is passed (the rest of the
// line is skipped unread into memory). SIGTERM or SIGINT stops it gracefully: no new
// connections or requests are taken, requests being answered get their replies, then exit 0.
// Without --port, the end of stdin ends the server too.
//
// retrieve: the one-shot form: one request (from flags, or --request as JSON) through the same
// handler, the reply printed.
//
// Errors: a message on the log and exit status 1 (bad bundle, bad flags, a port in use); bad
// requests get error replies and never stop the server.

#include <cstdint>
#include <optional>
#include <string>

namespace t2d::launcher {

struct ServeOptions {
  std::string bundle;
  std::string host = "127.0.0.1";
  int port = -1;                       // -1: no TCP; 0: any free port (printed on stderr)
  bool read_stdin = true;
  int64_t max_request_bytes = 1 << 20;
  int max_batch = 256;
  int max_connections = 256;
  int threads = 1;                     // torch threads of the user tower
  bool allow_updates = true;
};
int RunServe(const ServeOptions& options);

struct RetrieveOptions {
  std::string bundle;
  std::string request;   // a whole request line (JSON); otherwise built from the fields below
  std::string history;   // item ids, oldest first, separated by spaces or commas
  std::string times;     // their times, the same way
  std::optional<int64_t> time, user;
  std::optional<uint64_t> seed;
  int k = 10;
  bool json = false;     // print the reply line as it is
};
int RunRetrieve(const RetrieveOptions& options);

}  // namespace t2d::launcher
