#pragma once
// User profiles: categorical fields of a user (gender, age band, occupation, region, ...) that
// every sample of the user carries into the model's user tower (docs/model.md, "User profile fields").
//
// A profile value is stored and looked up as a key: UserFeatureKey(field name, value text), a
// stable 63-bit fingerprint, so a value needs no vocabulary (a field may have millions of
// values, and serving maps a value it was sent exactly as prepare did). 0 is "no value": an
// empty field, a user missing from the user file, or a value the client did not send. Keys of
// different fields differ (the field name is part of the key), so all fields can share one
// embedding table.
//
// Sources: a user file next to the interaction log (DataConfig.user_path; MovieLens users.dat
// and u.user by their published layouts, CSV by DataConfig.csv.user_feature_columns), columns of
// a CSV interaction file itself (data/sources.h, InteractionLog::user_features), or the
// synthetic generator's profile fields (data/generator.h).
//
// Memory: UserProfiles holds 8 bytes of id plus 8 bytes per field for every user of the file.
// Thread-safety: UserProfiles is immutable after Read and safe to share; functions are pure.
// Errors: as data/sources.h: a malformed line is InvalidArgument "FILE:LINE: what" (counted
// instead with skip_bad_lines), an unknown column names the file; a user listed twice is an
// error naming both lines' user.

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "data/data_config.pb.h"
#include "data/sources.h"

namespace t2d::data {

// Most profile fields a data set may have.
inline constexpr int kMaxUserFields = 64;

// The key of `value` in profile field `field`; 0 when the value is empty (after trimming ASCII
// white space). Part of the on-disk and serving contract: it must never change.
int64_t UserFeatureKey(std::string_view field, std::string_view value);

class UserProfiles {
 public:
  // Reads DataConfig.user_path by the layout of DataConfig.source; an empty user_path gives no
  // fields. Malformed lines are counted into *bad when config.skip_bad_lines is set.
  static absl::StatusOr<UserProfiles> Read(const config::DataConfig& config, BadLines* bad);
  // From memory (tests, and the generator's fields): users[i] has keys[i * F, (i + 1) * F).
  static absl::StatusOr<UserProfiles> FromKeys(std::vector<std::string> fields, std::vector<int64_t> users,
                                               std::vector<int64_t> keys);

  const std::vector<std::string>& fields() const { return fields_; }
  int num_fields() const { return static_cast<int>(fields_.size()); }
  int64_t num_users() const { return static_cast<int64_t>(users_.size()); }
  // The keys of `user` (num_fields of them), or null when the file does not list the user.
  const int64_t* Find(int64_t user) const;

 private:
  std::vector<std::string> fields_;
  std::vector<int64_t> users_;  // ascending
  std::vector<int64_t> keys_;   // [users, fields]
};

}  // namespace t2d::data
