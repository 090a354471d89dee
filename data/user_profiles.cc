#include "data/user_profiles.h"

#include <algorithm>
#include <numeric>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "common/hash.h"
#include "common/status_macros.h"

namespace t2d::data {
namespace {

// FNV-1a over the bytes, then the SplitMix64 finaliser (FNV alone mixes the last bytes poorly).
uint64_t Fingerprint(std::string_view s) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (unsigned char c : s) {
    h ^= c;
    h *= 0x100000001b3ULL;
  }
  return Mix64(h);
}

}  // namespace

int64_t UserFeatureKey(std::string_view field, std::string_view value) {
  const absl::string_view v = absl::StripAsciiWhitespace(absl::string_view(value.data(), value.size()));
  if (v.empty()) return 0;
  const int64_t key = static_cast<int64_t>(HashCombine(Fingerprint(field), Fingerprint(std::string_view(v.data(), v.size()))) >> 1);
  return key == 0 ? 1 : key;
}

absl::StatusOr<UserProfiles> UserProfiles::Read(const config::DataConfig& config, BadLines* bad) {
  if (config.user_path().empty()) return UserProfiles();
  std::vector<std::string> fields;
  std::vector<int64_t> users, keys;
  T2D_RETURN_IF_ERROR(ReadUserFile(config, bad, &fields, [&](int64_t user, absl::Span<const absl::string_view> values) {
    users.push_back(user);
    for (size_t f = 0; f < values.size(); ++f) {
      keys.push_back(UserFeatureKey(fields[f], std::string_view(values[f].data(), values[f].size())));
    }
    return absl::OkStatus();
  }));
  if (users.empty()) return absl::InvalidArgumentError(absl::StrCat(config.user_path(), ": no user line"));
  auto made = FromKeys(std::move(fields), std::move(users), std::move(keys));
  if (!made.ok()) return absl::Status(made.status().code(), absl::StrCat(config.user_path(), ": ", made.status().message()));
  return made;
}

absl::StatusOr<UserProfiles> UserProfiles::FromKeys(std::vector<std::string> fields, std::vector<int64_t> users,
                                                    std::vector<int64_t> keys) {
  const size_t F = fields.size();
  if (F == 0 || F > static_cast<size_t>(kMaxUserFields)) {
    return absl::InvalidArgumentError(absl::StrCat(F, " profile fields (1 to ", kMaxUserFields, " are allowed)"));
  }
  for (size_t i = 0; i < F; ++i) {
    for (size_t j = 0; j < i; ++j) {
      if (fields[i] == fields[j]) return absl::InvalidArgumentError(absl::StrCat("profile field \"", fields[i], "\" named twice"));
    }
  }
  if (keys.size() != users.size() * F) {
    return absl::InvalidArgumentError(absl::StrCat(keys.size(), " keys for ", users.size(), " users of ", F, " fields"));
  }
  UserProfiles p;
  p.fields_ = std::move(fields);
  std::vector<size_t> order(users.size());
  std::iota(order.begin(), order.end(), size_t{0});
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return users[a] < users[b]; });
  p.users_.reserve(users.size());
  p.keys_.reserve(keys.size());
  for (size_t r : order) {
    if (!p.users_.empty() && p.users_.back() == users[r]) {
      return absl::InvalidArgumentError(absl::StrCat("user ", users[r], " is listed twice"));
    }
    p.users_.push_back(users[r]);
    p.keys_.insert(p.keys_.end(), keys.begin() + static_cast<std::ptrdiff_t>(r * F),
                   keys.begin() + static_cast<std::ptrdiff_t>((r + 1) * F));
  }
  return p;
}

const int64_t* UserProfiles::Find(int64_t user) const {
  auto it = std::lower_bound(users_.begin(), users_.end(), user);
  if (it == users_.end() || *it != user) return nullptr;
  return keys_.data() + static_cast<size_t>(it - users_.begin()) * fields_.size();
}

}  // namespace t2d::data
