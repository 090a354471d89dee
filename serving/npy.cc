#include "serving/npy.h"

#include <cstring>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/file_util.h"

namespace t2d::serving {
namespace {

constexpr char kMagic[] = "\x93NUMPY";

std::string Header(const char* descr, const std::vector<int64_t>& shape) {
  std::string dims = absl::StrJoin(shape, ", ");
  if (shape.size() == 1) dims += ",";
  std::string dict = absl::StrCat("{'descr': '", descr, "', 'fortran_order': False, 'shape': (", dims, "), }");
  // magic(6) + version(2) + length(2) + dict + padding + '\n' is a multiple of 64.
  const size_t total = 10 + dict.size() + 1;
  dict.append((64 - total % 64) % 64, ' ');
  dict += '\n';
  std::string out(kMagic, 6);
  out += '\x01';
  out += '\x00';
  const auto len = static_cast<uint16_t>(dict.size());
  out.append(reinterpret_cast<const char*>(&len), 2);
  return out + dict;
}

template <typename T>
absl::Status Write(const std::string& path, const char* descr, absl::Span<const T> data, const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  if (n != static_cast<int64_t>(data.size())) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": shape holds ", n, " values, data has ", data.size()));
  }
  std::string bytes = Header(descr, shape);
  bytes.append(reinterpret_cast<const char*>(data.data()), data.size() * sizeof(T));
  return WriteFileAtomic(path, bytes);
}

template <typename T>
absl::StatusOr<NpyArray<T>> Read(const std::string& path, const char* descr) {
  auto bytes = ReadFileToString(path);
  if (!bytes.ok()) return bytes.status();
  const std::string& b = *bytes;
  if (b.size() < 10 || b.compare(0, 6, kMagic, 6) != 0) return absl::DataLossError(absl::StrCat(path, ": not a .npy file"));
  if (b[6] != 1) return absl::FailedPreconditionError(absl::StrCat(path, ": .npy version ", static_cast<int>(b[6]), " not supported"));
  uint16_t len;
  std::memcpy(&len, b.data() + 8, 2);
  if (b.size() < 10u + len) return absl::DataLossError(absl::StrCat(path, ": truncated header"));
  const std::string dict = b.substr(10, len);
  if (dict.find(absl::StrCat("'descr': '", descr, "'")) == std::string::npos) {
    return absl::FailedPreconditionError(absl::StrCat(path, ": expected dtype ", descr, " in ", dict));
  }
  if (dict.find("'fortran_order': False") == std::string::npos) {
    return absl::FailedPreconditionError(absl::StrCat(path, ": Fortran order is not supported"));
  }
  const size_t open = dict.find("'shape': (");
  const size_t close = dict.find(')', open);
  if (open == std::string::npos || close == std::string::npos) return absl::DataLossError(absl::StrCat(path, ": no shape"));
  NpyArray<T> a;
  int64_t n = 1;
  for (absl::string_view d : absl::StrSplit(dict.substr(open + 10, close - open - 10), ',', absl::SkipWhitespace())) {
    int64_t v;
    if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(d), &v) || v < 0) {
      return absl::DataLossError(absl::StrCat(path, ": bad shape in ", dict));
    }
    a.shape.push_back(v);
    n *= v;
  }
  const size_t need = 10u + len + static_cast<size_t>(n) * sizeof(T);
  if (b.size() != need) {
    return absl::DataLossError(absl::StrCat(path, ": ", b.size(), " bytes, the header implies ", need));
  }
  a.data.resize(static_cast<size_t>(n));
  std::memcpy(a.data.data(), b.data() + 10 + len, a.data.size() * sizeof(T));
  return a;
}

}  // namespace

absl::Status WriteNpy(const std::string& path, absl::Span<const float> data, const std::vector<int64_t>& shape) {
  return Write(path, "<f4", data, shape);
}
absl::Status WriteNpy(const std::string& path, absl::Span<const int64_t> data, const std::vector<int64_t>& shape) {
  return Write(path, "<i8", data, shape);
}
absl::StatusOr<NpyArray<float>> ReadNpyFloat(const std::string& path) { return Read<float>(path, "<f4"); }
absl::StatusOr<NpyArray<int64_t>> ReadNpyInt64(const std::string& path) { return Read<int64_t>(path, "<i8"); }

}  // namespace t2d::serving
