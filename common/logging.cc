#include "common/logging.h"

#include <glog/logging.h>

#include <cstdlib>
#include <iomanip>
#include <ostream>

namespace t2d {
namespace {

// glog's prefix callback receives a raw pointer; the tag lives for the whole process.
std::string& Tag() {
  static std::string* tag = new std::string("main");
  return *tag;
}

void PrefixWithTag(std::ostream& s, const google::LogMessageInfo& l, void* data) {
  const auto* tag = static_cast<const std::string*>(data);
  s << l.severity[0] << std::setw(2) << std::setfill('0') << 1 + l.time.month() << std::setw(2)
    << l.time.day() << ' ' << std::setw(2) << l.time.hour() << ':' << std::setw(2) << l.time.min()
    << ':' << std::setw(2) << l.time.sec() << '.' << std::setw(6) << l.time.usec() << std::setfill(' ')
    << " [" << *tag << "] " << l.filename << ':' << l.line_number << ']';
}

// glog's failure function has a noreturn function type; clang (unlike gcc) will not convert a
// plain function pointer to it, so glog gets this trampoline, which also keeps a handler that
// does return from returning into glog.
FatalHandler g_on_fatal = nullptr;
__attribute__((noreturn)) void OnFatal() {
  g_on_fatal();
  std::abort();
}

}  // namespace

void InitLogging(const char* argv0, const LoggingOptions& options) {
  Tag() = options.rank >= 0 ? options.role + " " + std::to_string(options.rank) : options.role;
  FLAGS_logtostderr = options.log_to_stderr;
  if (!google::IsGoogleLoggingInitialized()) {
    google::InitGoogleLogging(argv0, &PrefixWithTag, &Tag());
  }
  if (options.on_fatal != nullptr) {
    g_on_fatal = options.on_fatal;
    google::InstallFailureFunction(&OnFatal);
  }
}

std::string LogTag() { return Tag(); }

}  // namespace t2d
