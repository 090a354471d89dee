#include "launcher/launch.h"

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace t2d::launcher {

std::vector<std::string> BuildMpirunCommand(const config::JobConfig& config, const LaunchOptions& options) {
  const auto& c = config.cluster();
  std::vector<std::string> argv = {options.mpirun, "-n", std::to_string(c.num_servers() + c.num_workers())};
  if (options.as_root) argv.push_back("--allow-run-as-root");
  if (c.hostfile().empty()) {
    argv.push_back("--oversubscribe");
    // One machine: shared memory between ranks (vader; self for a rank to itself) and no TCP
    // BTL, whose listeners bind every interface; the runtime's out-of-band channel on
    // loopback.
    argv.insert(argv.end(), {"--mca", "btl", "self,vader", "--mca", "oob_tcp_if_include", "lo"});
  } else {
    argv.insert(argv.end(), {"--hostfile", c.hostfile()});
  }
  // Ranks are not pinned: servers mostly wait on the network, and each worker sets its own
  // torch thread count (cluster.torch_threads).
  argv.insert(argv.end(), {"--bind-to", "none"});
  argv.push_back(options.binary);
  argv.insert(argv.end(), options.args.begin(), options.args.end());
  return argv;
}

absl::Status CheckRankCount(const config::JobConfig& config, int slots, bool many_ranks) {
  const auto& c = config.cluster();
  const int64_t ranks = int64_t{c.num_servers()} + c.num_workers();
  if (many_ranks || ranks <= int64_t{kMaxRanksPerSlot} * slots) return absl::OkStatus();
  const std::string where =
      c.hostfile().empty() ? absl::StrCat(slots, " cores of this machine") : absl::StrCat(slots, " slots of ", c.hostfile());
  return absl::FailedPreconditionError(absl::StrCat(
      "the job has ", ranks, " ranks (cluster.num_servers ", c.num_servers(), " + cluster.num_workers ",
      c.num_workers(), "), more than ", kMaxRanksPerSlot, " per slot of the ", where,
      "; check the config, or pass --many-ranks to start them anyway"));
}

int HostfileSlots(const std::string& text, int default_slots) {
  int total = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    line = absl::StripAsciiWhitespace(line.substr(0, line.find('#')));
    if (line.empty()) continue;
    int slots = default_slots;
    for (absl::string_view word : absl::StrSplit(line, ' ', absl::SkipWhitespace())) {
      int n = 0;
      if (absl::ConsumePrefix(&word, "slots=") && absl::SimpleAtoi(word, &n)) slots = n;
    }
    total += slots;
  }
  return total;
}

std::string ShellJoin(const std::vector<std::string>& argv) {
  std::string out;
  for (const auto& a : argv) {
    if (!out.empty()) out += ' ';
    const bool plain = !a.empty() && a.find_first_not_of(
        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./=:,@+") == std::string::npos;
    if (plain) {
      out += a;
    } else {
      out += '\'';
      for (char ch : a) out += ch == '\'' ? std::string("'\\''") : std::string(1, ch);
      out += '\'';
    }
  }
  return out;
}

}  // namespace t2d::launcher
