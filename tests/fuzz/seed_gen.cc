// Writes the seed corpora of the fuzz targets into OUT_DIR/<target>/: small valid inputs made
// with the project's own writers, so seeds follow format changes without checked-in binaries.
// Usage: fuzz_seed_gen OUT_DIR

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "data/sample_file.h"
#include "embedding/embedding_table.h"
#include "embedding/shard_file.h"
#include "ps/messages.h"
#include "tests/fuzz/seed_specs.h"

namespace t2d::fuzz {
namespace {

namespace fs = std::filesystem;

void WriteBytes(const fs::path& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
}

bool Check(const absl::Status& s, const char* what) {
  if (!s.ok()) std::fprintf(stderr, "fuzz_seed_gen: %s: %s\n", what, s.ToString().c_str());
  return s.ok();
}

bool SampleFiles(const fs::path& dir) {
  data::SampleFileHeader h;
  h.set_kind(data::SampleFileHeader::SAMPLES);
  h.set_split("train");
  h.set_window(50);
  // A 96-byte chunk size gives several chunks from three users.
  auto w = data::SampleFileWriter::Create((dir / "samples.t2ds").string(), h, 96);
  if (!Check(w.status(), "samples")) return false;
  std::vector<int64_t> tag_a{7}, tag_b{8, 9}, none;
  for (int u = 0; u < 3; ++u) {
    std::vector<int64_t> items{100 + u, 200, 300, 400};
    std::vector<int64_t> times{1, 2, 3, 4};
    std::vector<absl::Span<const int64_t>> tags{tag_a, tag_b, none, tag_a};
    std::vector<data::TargetRef> targets{{2, 1}, {3, 3}};
    if (!Check((*w)->AddUser(u, items, times, tags, targets), "samples")) return false;
  }
  if (!Check((*w)->Finish(), "samples")) return false;
  // The same users with two profile keys each (chunk kind 5), one of them missing.
  h.set_user_fields(2);
  auto pw = data::SampleFileWriter::Create((dir / "samples_profile.t2ds").string(), h, 96);
  if (!Check(pw.status(), "samples with profile keys")) return false;
  for (int u = 0; u < 3; ++u) {
    std::vector<int64_t> items{100 + u, 200, 300, 400};
    std::vector<int64_t> times{1, 2, 3, 4};
    std::vector<absl::Span<const int64_t>> tags{tag_a, tag_b, none, tag_a};
    std::vector<data::TargetRef> targets{{2, 1}, {3, 3}};
    std::vector<int64_t> keys{int64_t{1} << 40 | u, 0};
    if (!Check((*pw)->AddUser(u, items, times, tags, targets, keys), "samples with profile keys")) return false;
  }
  if (!Check((*pw)->Finish(), "samples with profile keys")) return false;
  data::SampleFileHeader ih;
  ih.set_kind(data::SampleFileHeader::ITEMS);
  auto iw = data::SampleFileWriter::Create((dir / "items.t2ds").string(), ih, 48);
  if (!Check(iw.status(), "items")) return false;
  for (int64_t id : {100, 200, 300}) {
    if (!Check((*iw)->AddItem(id, tag_b, id / 100), "items")) return false;
  }
  return Check((*iw)->Finish(), "items");
}

bool ShardFiles(const fs::path& dir) {
  for (auto kind : {config::SparseOptimizerConfig::ADAGRAD, config::SparseOptimizerConfig::ADAM}) {
    auto table = embedding::EmbeddingTable::Create(ShardSpec(kind));
    if (!Check(table.status(), "shard")) return false;
    const std::vector<int64_t> ids{1, 2, 3, 1000};
    const std::vector<float> grads(ids.size() * 4, 0.5f);
    if (!Check((*table)->ApplyGradients(ids, grads), "shard")) return false;
    const std::string name = kind == config::SparseOptimizerConfig::ADAM ? "adam.t2demb" : "adagrad.t2demb";
    if (!Check(embedding::WriteShardFile((dir / name).string(), **table, 0, 1), "shard")) return false;
  }
  return true;
}

void PsMessages(const fs::path& dir) {
  auto header = [](ps::Header::Type type, int64_t n, int32_t dim, int64_t round) {
    ps::Header h;
    h.set_version(ps::kWireVersion);
    h.set_type(type);
    h.set_request_id(7);
    h.set_table(0);
    h.set_num_ids(n);
    h.set_dim(dim);
    h.set_round(round);
    return h;
  };
  const std::string ids(2 * 8, '\1');
  WriteBytes(dir / "pull", ps::EncodeFrame(header(ps::Header::PULL, 2, 4, 0), ids));
  WriteBytes(dir / "push", ps::EncodeFrame(header(ps::Header::PUSH, 2, 4, 1), ids + std::string(2 * 4 * 4, '\0')));
  WriteBytes(dir / "stats", ps::EncodeFrame(header(ps::Header::STATS, 0, 0, 0)));
  ps::Header save = header(ps::Header::SAVE, 0, 0, 0);
  save.set_path("/nonexistent/dir");
  WriteBytes(dir / "save", ps::EncodeFrame(save));
  WriteBytes(dir / "error_reply",
             ps::EncodeFrame(ps::ReplyHeader(header(ps::Header::PULL, 1, 4, 0), absl::InvalidArgumentError("bad"))));
}

// One seed per source format: the selector byte (index into SourceKinds()), then the files.
void Sources(const fs::path& dir) {
  const std::string items(kItemsMarker);
  WriteBytes(dir / "movielens", std::string(1, '\0') + "1::10::5::100\n1::20::3::90\n2::10::1::50\n" + items +
                                    "10::Toy Story (1995)::Animation|Comedy\n20::Heat (1995)::\n");
  WriteBytes(dir / "ml100k", std::string(1, '\1') + "196\t242\t3\t881250949\n186\t302\t3\t891717742\n" + items +
                                 "242|Kolya (1996)|24-Jan-1997||http://x|0|0|0|0|0|1|0|0|0|0|0|0|0|0|0|0|0|0|1\n");
  WriteBytes(dir / "ml1m_seq", std::string(1, '\2') + "1 3186 1721 1022\n2 1198 1217\n");
  WriteBytes(dir / "movietweetings", std::string(1, '\3') + "1::1074638::7::1365029107\n2::0104257::8::1364690142\n" +
                                         items + "0104257::A Few Good Men (1992)::Crime|Drama\n1074638::Skyfall::\n");
  WriteBytes(dir / "kuairand",
             std::string(1, '\4') +
                 "user_id,video_id,date,hourmin,time_ms,is_click,is_like,is_follow,is_comment,is_forward,is_hate,"
                 "long_view,play_time_ms,duration_ms,profile_stay_time,comment_stay_time,is_profile_enter,is_rand,tab\n"
                 "0,100,20220408,1000,1649383200123,1,0,0,0,0,0,1,9000,12000,0,0,0,0,1\n" +
                 items +
                 "video_id,author_id,video_type,upload_dt,upload_type,visible_status,video_duration,server_width,"
                 "server_height,music_id,music_type,tag\n"
                 "100,5,NORMAL,2022-03-01,ShortImport,public,12000,720,1280,9,4,\"8,12\"\n");
  WriteBytes(dir / "csv", std::string(1, '\5') + "u,i,t,r,g\n1,10,100,4,a|b\n1,\"11\",200,5,\n2,10,300,1,c\n" + items +
                              "i,g\n10,a|b\n11,\"c,d\"\n");
  // 0x47: 0x47 % 6 = 5 (CSV) with the tab flag (0x40).
  WriteBytes(dir / "tsv", std::string(1, '\x47') + "u\ti\tt\tr\tg\n1\t10\t100\t4\ta|b\n");
}

// Serving request lines (serving/protocol.h): each kind of request, and a few near misses.
void Requests(const fs::path& dir) {
  WriteBytes(dir / "query", R"({"id":1,"user":17,"items":[5,9,2],"times":[100,160,220],"time":300,"k":10,"seed":3})");
  WriteBytes(dir / "queries", R"({"id":"b","queries":[{"items":[1],"times":[1]},{"items":[2,3],"k":2}]})");
  WriteBytes(dir / "update", R"({"id":3,"update":"/tmp/delta"})");
  WriteBytes(dir / "info", R"({"info":true})");
  WriteBytes(dir / "profile", R"({"items":[1,2],"user_features":{"gender":"M","age":25,"zip":null}})");
  WriteBytes(dir / "profile_keys", R"({"items":[1],"user_feature_keys":[7,0,-3]})");
  WriteBytes(dir / "unknown_field", R"({"items":[1],"colour":"red"})");
  WriteBytes(dir / "big_numbers", R"({"items":[18446744073709551615,-9223372036854775808],"k":1e3})");
}

int Main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: fuzz_seed_gen OUT_DIR\n");
    return 2;
  }
  const fs::path out = argv[1];
  for (const char* target : {"sample_file_fuzz", "shard_file_fuzz", "ps_messages_fuzz", "sources_fuzz", "request_fuzz"}) {
    fs::create_directories(out / target);
  }
  if (!SampleFiles(out / "sample_file_fuzz") || !ShardFiles(out / "shard_file_fuzz")) return 1;
  PsMessages(out / "ps_messages_fuzz");
  Sources(out / "sources_fuzz");
  Requests(out / "request_fuzz");
  return 0;
}

}  // namespace
}  // namespace t2d::fuzz

int main(int argc, char** argv) { return t2d::fuzz::Main(argc, argv); }
