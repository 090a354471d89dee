#include "model/dense_state.h"

#include <cstring>
#include <map>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/checksum.h"
#include "common/chunk_file.h"
#include "common/file_util.h"
#include "common/status_macros.h"

namespace t2d::model {
namespace {

constexpr char kMagic[8] = {'T', '2', 'D', 'D', 'E', 'N', 'S', 'E'};
constexpr uint32_t kVersion = 1;
constexpr uint32_t kFloat32 = 1, kInt64 = 2;

}  // namespace

std::string EncodeDenseState(const std::vector<DenseArray>& arrays) {
  std::string out(kMagic, sizeof(kMagic));
  PutLe<uint32_t>(&out, kVersion);
  PutLe<uint32_t>(&out, static_cast<uint32_t>(arrays.size()));
  for (const DenseArray& a : arrays) {
    PutLe<uint32_t>(&out, static_cast<uint32_t>(a.name.size()));
    out.append(a.name);
    PutLe<uint32_t>(&out, a.is_int ? kInt64 : kFloat32);
    PutLe<uint32_t>(&out, static_cast<uint32_t>(a.shape.size()));
    PutLeArray(&out, a.shape.data(), a.shape.size());
    if (a.is_int) {
      PutLeArray(&out, a.i64.data(), a.i64.size());
    } else {
      PutLeArray(&out, a.f32.data(), a.f32.size());
    }
  }
  PutLe<uint32_t>(&out, Crc32(out.data(), out.size()));
  return out;
}

absl::StatusOr<std::vector<DenseArray>> DecodeDenseState(const std::string& bytes, const std::string& what) {
  if (bytes.size() < sizeof(kMagic) + 12 || std::memcmp(bytes.data(), kMagic, sizeof(kMagic)) != 0) {
    return absl::DataLossError(absl::StrCat(what, ": not a dense state file (bad magic or too short)"));
  }
  const size_t body = bytes.size() - 4;
  uint32_t stored_crc;
  std::memcpy(&stored_crc, bytes.data() + body, 4);
  const uint32_t crc = Crc32(bytes.data(), body);
  if (crc != stored_crc) {
    return absl::DataLossError(absl::StrCat(what, ": checksum mismatch (stored ", stored_crc, ", computed ", crc,
                                            "); the file is corrupt or truncated"));
  }
  ByteReader r(absl::string_view(bytes.data(), body));
  auto truncated = [&](const char* field) {
    return absl::DataLossError(absl::StrCat(what, ": truncated while reading ", field, " at byte ", r.pos()));
  };
  char magic[8];
  uint32_t version = 0, count = 0;
  if (!r.GetBytes(magic, 8)) return truncated("magic");
  if (!r.Get(&version)) return truncated("version");
  if (version != kVersion) {
    return absl::DataLossError(absl::StrCat(what, ": format version ", version, " is not supported (expected ",
                                            kVersion, ")"));
  }
  if (!r.Get(&count)) return truncated("array count");
  std::vector<DenseArray> arrays;
  for (uint32_t i = 0; i < count; ++i) {
    DenseArray a;
    uint32_t name_len = 0, dtype = 0, rank = 0;
    if (!r.Get(&name_len)) return truncated("name length");
    if (name_len > r.left()) return absl::DataLossError(absl::StrCat(what, ": array ", i, " name length too large"));
    a.name.resize(name_len);
    r.GetBytes(a.name.data(), name_len);  // fits: checked above
    if (!r.Get(&dtype)) return truncated("dtype");
    if (dtype != kFloat32 && dtype != kInt64) {
      return absl::DataLossError(absl::StrCat(what, ": array \"", a.name, "\" has unknown dtype ", dtype));
    }
    a.is_int = dtype == kInt64;
    if (!r.Get(&rank)) return truncated("rank");
    if (rank > 16) return absl::DataLossError(absl::StrCat(what, ": array \"", a.name, "\" has rank ", rank));
    uint64_t numel = 1;
    for (uint32_t k = 0; k < rank; ++k) {
      int64_t s = 0;
      if (!r.Get(&s)) return truncated("shape");
      if (s < 0 || (s > 0 && numel > (uint64_t{1} << 40) / static_cast<uint64_t>(s))) {
        return absl::DataLossError(absl::StrCat(what, ": array \"", a.name, "\" has a bad shape"));
      }
      a.shape.push_back(s);
      numel *= static_cast<uint64_t>(s);
    }
    if (!(a.is_int ? r.GetArray(numel, &a.i64) : r.GetArray(numel, &a.f32))) {
      return absl::DataLossError(absl::StrCat(what, ": array \"", a.name, "\" is truncated"));
    }
    arrays.push_back(std::move(a));
  }
  if (r.left() != 0) return absl::DataLossError(absl::StrCat(what, ": ", r.left(), " unexpected trailing bytes"));
  return arrays;
}

absl::Status SaveDenseState(const std::string& path, const Model& model, const DenseAdam* optimizer) {
  std::vector<DenseArray> arrays;
  const absl::Span<const float> flat = model.DenseParameters();
  for (const ParameterInfo& p : model.Parameters()) {
    DenseArray a;
    a.name = "param/" + p.name;
    a.shape = p.shape;
    a.f32.assign(flat.begin() + p.offset, flat.begin() + p.offset + p.numel);
    arrays.push_back(std::move(a));
  }
  if (optimizer != nullptr) {
    const int64_t n = static_cast<int64_t>(optimizer->size());
    arrays.push_back({"adam/m", {n}, false, optimizer->first_moment(), {}});
    arrays.push_back({"adam/v", {n}, false, optimizer->second_moment(), {}});
    arrays.push_back({"adam/step", {1}, true, {}, {optimizer->step()}});
  }
  return WriteFileAtomic(path, EncodeDenseState(arrays));
}

absl::Status LoadDenseState(const std::string& path, Model* model, DenseAdam* optimizer) {
  T2D_ASSIGN_OR_RETURN(std::string bytes, ReadFileToString(path));
  T2D_ASSIGN_OR_RETURN(std::vector<DenseArray> arrays, DecodeDenseState(bytes, path));
  std::map<std::string, const DenseArray*> by_name;
  for (const DenseArray& a : arrays) {
    if (!by_name.emplace(a.name, &a).second) {
      return absl::DataLossError(absl::StrCat(path, ": array \"", a.name, "\" appears twice"));
    }
  }
  auto shape_str = [](const std::vector<int64_t>& s) { return absl::StrCat("[", absl::StrJoin(s, ", "), "]"); };
  // Check everything before touching the model.
  for (const ParameterInfo& p : model->Parameters()) {
    auto it = by_name.find("param/" + p.name);
    if (it == by_name.end()) {
      return absl::FailedPreconditionError(absl::StrCat(path, ": no parameter \"", p.name,
                                                        "\" (was the file written by a model of another kind?)"));
    }
    if (it->second->is_int || it->second->shape != p.shape) {
      return absl::FailedPreconditionError(absl::StrCat(path, ": parameter \"", p.name, "\" has shape ",
                                                        shape_str(it->second->shape), ", the model expects ",
                                                        shape_str(p.shape)));
    }
  }
  size_t file_params = 0;
  for (const DenseArray& a : arrays) file_params += a.name.rfind("param/", 0) == 0;
  if (file_params != model->Parameters().size()) {
    for (const DenseArray& a : arrays) {
      if (a.name.rfind("param/", 0) != 0) continue;
      bool known = false;
      for (const ParameterInfo& p : model->Parameters()) known |= ("param/" + p.name) == a.name;
      if (!known) {
        return absl::FailedPreconditionError(
            absl::StrCat(path, ": parameter \"", a.name.substr(6), "\" is not part of this model"));
      }
    }
  }
  const DenseArray *m = nullptr, *v = nullptr, *step = nullptr;
  if (optimizer != nullptr) {
    auto find = [&](const char* name) -> const DenseArray* {
      auto it = by_name.find(name);
      return it == by_name.end() ? nullptr : it->second;
    };
    m = find("adam/m");
    v = find("adam/v");
    step = find("adam/step");
    if (m == nullptr || v == nullptr || step == nullptr) {
      return absl::FailedPreconditionError(absl::StrCat(path, ": holds no dense optimizer state (adam/m, adam/v, adam/step)"));
    }
    if (m->is_int || v->is_int || !step->is_int || m->f32.size() != optimizer->size() ||
        v->f32.size() != optimizer->size() || step->i64.size() != 1) {
      return absl::FailedPreconditionError(absl::StrCat(path, ": optimizer state of ", m->f32.size(),
                                                        " values does not fit the optimizer's ", optimizer->size()));
    }
  }
  absl::Span<float> flat = model->DenseParameters();
  for (const ParameterInfo& p : model->Parameters()) {
    const DenseArray& a = *by_name["param/" + p.name];
    std::copy(a.f32.begin(), a.f32.end(), flat.begin() + p.offset);
  }
  if (optimizer != nullptr) {
    optimizer->first_moment() = m->f32;
    optimizer->second_moment() = v->f32;
    optimizer->set_step(step->i64[0]);
  }
  return absl::OkStatus();
}

}  // namespace t2d::model
