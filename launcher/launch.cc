#include "launcher/launch.h"

#include "absl/strings/str_cat.h"

namespace t2d::launcher {

std::vector<std::string> BuildMpirunCommand(const config::JobConfig& config, const LaunchOptions& options) {
  const auto& c = config.cluster();
  std::vector<std::string> argv = {options.mpirun, "-n", std::to_string(c.num_servers() + c.num_workers())};
  if (options.as_root) argv.push_back("--allow-run-as-root");
  if (c.hostfile().empty()) {
    argv.push_back("--oversubscribe");
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
