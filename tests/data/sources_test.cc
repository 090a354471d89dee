#include "data/sources.h"

#include <gtest/gtest.h>

#include <filesystem>

#include "absl/strings/str_cat.h"
#include "data/line_reader.h"
#include "tests/data/test_util.h"

namespace t2d::data {
namespace {

using config::DataConfig;
using testing::TempDir;
using testing::WriteGzip;
using testing::WriteText;

std::vector<int64_t> Tags(const InteractionLog& log, int64_t item) {
  auto it = log.item_tags.find(item);
  return it == log.item_tags.end() ? std::vector<int64_t>{} : it->second;
}

TEST(LineReaderTest, PlainGzipCrLfAndNoFinalNewline) {
  TempDir dir;
  for (const std::string& path : {WriteText(dir.File("a.txt"), "one\r\ntwo\nthree"),
                                  WriteGzip(dir.File("a.txt.gz"), "one\r\ntwo\nthree")}) {
    auto r = LineReader::Open(path);
    ASSERT_TRUE(r.ok()) << r.status();
    std::vector<std::string> lines;
    absl::string_view line;
    while (true) {
      auto more = (*r)->Next(&line);
      ASSERT_TRUE(more.ok()) << more.status();
      if (!*more) break;
      lines.emplace_back(line);
    }
    EXPECT_EQ(lines, (std::vector<std::string>{"one", "two", "three"})) << path;
    EXPECT_EQ((*r)->line_number(), 3);
  }
}

TEST(LineReaderTest, LongLinesSpanBuffers) {
  TempDir dir;
  const std::string big(3 << 20, 'x');
  auto r = LineReader::Open(WriteText(dir.File("big.txt"), "a\n" + big + "\nb\n"));
  ASSERT_TRUE(r.ok());
  absl::string_view line;
  ASSERT_TRUE(*(*r)->Next(&line));
  EXPECT_EQ(line, "a");
  ASSERT_TRUE(*(*r)->Next(&line));
  EXPECT_EQ(line.size(), big.size());
  ASSERT_TRUE(*(*r)->Next(&line));
  EXPECT_EQ(line, "b");
  EXPECT_FALSE(*(*r)->Next(&line));
}

TEST(LineReaderTest, MissingAndTruncatedGzipNameTheFile) {
  TempDir dir;
  auto missing = LineReader::Open(dir.File("nope.dat"));
  ASSERT_FALSE(missing.ok());
  EXPECT_TRUE(absl::IsNotFound(missing.status()));
  EXPECT_NE(missing.status().message().find("nope.dat"), std::string::npos);

  std::string text;
  for (int i = 0; i < 20000; ++i) text += std::to_string(i) + "::" + std::to_string(i * 7 % 1000) + "::5::978300760\n";
  const std::string gz = WriteGzip(dir.File("r.dat.gz"), text);
  std::filesystem::resize_file(gz, std::filesystem::file_size(gz) / 2);
  auto r = LineReader::Open(gz);
  ASSERT_TRUE(r.ok());
  absl::string_view line;
  absl::Status status;
  while (true) {
    auto more = (*r)->Next(&line);
    if (!more.ok()) {
      status = more.status();
      break;
    }
    if (!*more) break;
  }
  ASSERT_FALSE(status.ok()) << "a truncated gzip file must not read as a clean end";
  EXPECT_TRUE(absl::IsDataLoss(status)) << status;
  EXPECT_NE(status.message().find("r.dat.gz"), std::string::npos);
}

TEST(SplitCsvLineTest, QuotesAndDelimiters) {
  std::vector<absl::string_view> f;
  std::vector<std::string> storage;
  ASSERT_TRUE(SplitCsvLine("a,b,,c", ',', &f, &storage));
  EXPECT_EQ(f, (std::vector<absl::string_view>{"a", "b", "", "c"}));
  ASSERT_TRUE(SplitCsvLine("1,\"8,12\",\"say \"\"hi\"\"\"", ',', &f, &storage));
  ASSERT_EQ(f.size(), 3u);
  EXPECT_EQ(f[1], "8,12");
  EXPECT_EQ(f[2], "say \"hi\"");
  EXPECT_FALSE(SplitCsvLine("1,\"open", ',', &f, &storage));
}

DataConfig MovieLensConfig(const TempDir& dir) {
  DataConfig c;
  c.set_source(DataConfig::MOVIELENS_DAT);
  c.add_input_paths(WriteText(dir.File("ratings.dat"),
                              "1::10::5::100\n"
                              "1::20::3::90\n"
                              "2::10::1::50\n"
                              "3::30::4::70\n"));
  c.set_item_path(WriteText(dir.File("movies.dat"),
                            "10::Toy Story (1995)::Animation|Children's|Comedy\n"
                            "20::Heat (1995)::Action|Crime|Thriller\n"
                            "30::No genres::\n"));
  return c;
}

TEST(ReadSourceTest, MovieLensDatWithGenres) {
  TempDir dir;
  DataConfig c = MovieLensConfig(dir);
  auto log = ReadSource(c);
  ASSERT_TRUE(log.ok()) << log.status();
  ASSERT_EQ(log->interactions.size(), 4u);
  EXPECT_EQ(log->interactions[1].user, 1);
  EXPECT_EQ(log->interactions[1].item, 20);
  EXPECT_EQ(log->interactions[1].time, 90);
  EXPECT_TRUE(log->has_timestamps);
  // Tag ids are 1..V by sorted name.
  EXPECT_EQ(log->tag_names, (std::vector<std::string>{"Action", "Animation", "Children's", "Comedy", "Crime", "Thriller"}));
  EXPECT_EQ(Tags(*log, 10), (std::vector<int64_t>{2, 3, 4}));
  EXPECT_EQ(Tags(*log, 20), (std::vector<int64_t>{1, 5, 6}));
  EXPECT_TRUE(Tags(*log, 30).empty());
  EXPECT_EQ(log->rows_read, 4);
  EXPECT_EQ(log->empty_users, 0);

  // Positives filter: rating >= 4 keeps two rows; user 2 has no positive left.
  c.set_min_rating(4);
  c.set_first_tag_only(true);
  log = ReadSource(c);
  ASSERT_TRUE(log.ok());
  EXPECT_EQ(log->interactions.size(), 2u);
  EXPECT_EQ(log->rows_filtered, 2);
  EXPECT_EQ(log->empty_users, 1);
  EXPECT_EQ(Tags(*log, 10).size(), 1u);
}

TEST(ReadSourceTest, GzippedRatingsAreReadDirectly) {
  TempDir dir;
  DataConfig c;
  c.set_source(DataConfig::MOVIELENS_DAT);
  c.add_input_paths(WriteGzip(dir.File("ratings.dat.gz"), "1::1193::5::978300760\n1::661::3::978302109\n"));
  auto log = ReadSource(c);
  ASSERT_TRUE(log.ok()) << log.status();
  ASSERT_EQ(log->interactions.size(), 2u);
  EXPECT_EQ(log->interactions[0].item, 1193);
}

TEST(ReadSourceTest, MalformedLineNamesFileAndLineOrIsCountedWhenSkipping) {
  TempDir dir;
  DataConfig c;
  c.set_source(DataConfig::MOVIELENS_DAT);
  c.add_input_paths(WriteText(dir.File("ratings.dat"), "1::10::5::100\n1::x::5::100\n2::10::5\n3::10::5::7\n"));
  auto log = ReadSource(c);
  ASSERT_FALSE(log.ok());
  EXPECT_TRUE(absl::IsInvalidArgument(log.status()));
  EXPECT_NE(log.status().message().find("ratings.dat:2:"), std::string::npos) << log.status();

  c.set_skip_bad_lines(true);
  log = ReadSource(c);
  ASSERT_TRUE(log.ok()) << log.status();
  EXPECT_EQ(log->interactions.size(), 2u);
  EXPECT_EQ(log->bad_lines.count, 2);
  ASSERT_EQ(log->bad_lines.examples.size(), 2u);
  EXPECT_NE(log->bad_lines.examples[1].find("ratings.dat:3:"), std::string::npos);
}

// Values that parse as numbers but are not usable: a time that is not finite or does not fit
// an int64 (it used to become INT64_MIN, moving the row to the front of its user's sequence),
// and a rating or label that is not finite ("nan" used to read as a negative). Each is a bad
// line naming file and line, or counted with skip_bad_lines.
TEST(ReadSourceTest, NonFiniteOrHugeTimesAndRatingsAreBadLines) {
  TempDir dir;
  DataConfig c;
  c.set_source(DataConfig::CSV);
  c.mutable_csv()->set_user_column("u");
  c.mutable_csv()->set_item_column("i");
  c.mutable_csv()->set_time_column("t");
  c.mutable_csv()->set_label_column("r");
  const std::vector<std::pair<std::string, std::string>> bad_fields = {
      {"nan", "1"}, {"inf", "1"}, {"-inf", "1"}, {"1e30", "1"}, {"-1e30", "1"}, {"9.3e18", "1"}, {"5", "nan"},
      {"5", "inf"}};
  for (const auto& [time, label] : bad_fields) {
    c.clear_input_paths();
    c.add_input_paths(WriteText(dir.File("t.csv"), absl::StrCat("u,i,t,r\n1,10,100,1\n1,11,", time, ",", label, "\n")));
    c.set_skip_bad_lines(false);
    auto log = ReadSource(c);
    ASSERT_FALSE(log.ok()) << time << " " << label;
    EXPECT_TRUE(absl::IsInvalidArgument(log.status())) << log.status();
    EXPECT_NE(log.status().message().find("t.csv:3:"), std::string::npos) << log.status();
    c.set_skip_bad_lines(true);
    log = ReadSource(c);
    ASSERT_TRUE(log.ok()) << log.status();
    EXPECT_EQ(log->interactions.size(), 1u) << time << " " << label;
    EXPECT_EQ(log->bad_lines.count, 1) << time << " " << label;
  }
  // Milliseconds are range-checked after the division: 1e21 ms fits no int64 of seconds either.
  c.mutable_csv()->set_time_unit(config::CsvFormat::MILLISECONDS);
  c.set_skip_bad_lines(false);
  c.set_input_paths(0, WriteText(dir.File("ms.csv"), "u,i,t,r\n1,10,1e25,1\n"));
  auto log = ReadSource(c);
  ASSERT_FALSE(log.ok());
  EXPECT_NE(log.status().message().find("ms.csv:2:"), std::string::npos) << log.status();
  // The largest times that do fit are kept as they are.
  c.set_input_paths(0, WriteText(dir.File("ok.csv"), "u,i,t,r\n1,10,-9.2e21,1\n1,11,9.2e21,1\n"));
  log = ReadSource(c);
  ASSERT_TRUE(log.ok()) << log.status();
  ASSERT_EQ(log->interactions.size(), 2u);
  EXPECT_EQ(log->interactions[0].time, static_cast<int64_t>(-9.2e21 / 1000.0));
  EXPECT_EQ(log->interactions[1].time, static_cast<int64_t>(9.2e21 / 1000.0));

  // The colon and tab formats refuse a non-finite rating the same way.
  DataConfig m;
  m.set_source(DataConfig::MOVIELENS_DAT);
  m.add_input_paths(WriteText(dir.File("ratings.dat"), "1::10::5::100\n1::11::nan::200\n"));
  log = ReadSource(m);
  ASSERT_FALSE(log.ok());
  EXPECT_NE(log.status().message().find("ratings.dat:2:"), std::string::npos) << log.status();
  m.set_source(DataConfig::MOVIELENS_100K);
  m.set_input_paths(0, WriteText(dir.File("u.data"), "1\t10\tinf\t100\n"));
  log = ReadSource(m);
  ASSERT_FALSE(log.ok());
  EXPECT_NE(log.status().message().find("u.data:1:"), std::string::npos) << log.status();
}

TEST(ReadSourceTest, MissingInputNamesTheFile) {
  TempDir dir;
  DataConfig c;
  c.set_source(DataConfig::MOVIELENS_DAT);
  c.add_input_paths(dir.File("absent.dat"));
  auto log = ReadSource(c);
  ASSERT_FALSE(log.ok());
  EXPECT_NE(log.status().message().find("absent.dat"), std::string::npos);
  c.clear_input_paths();
  EXPECT_FALSE(ReadSource(c).ok());
}

TEST(ReadSourceTest, MovieLens100k) {
  TempDir dir;
  DataConfig c;
  c.set_source(DataConfig::MOVIELENS_100K);
  c.add_input_paths(WriteText(dir.File("u.data"), "196\t242\t3\t881250949\n186\t302\t3\t891717742\n196\t302\t5\t881250950\n"));
  WriteText(dir.File("u.genre"), "unknown|0\nAction|1\nAdventure|2\nAnimation|3\nChildren's|4\nComedy|5\nCrime|6\n"
                                 "Documentary|7\nDrama|8\nFantasy|9\nFilm-Noir|10\nHorror|11\nMusical|12\nMystery|13\n"
                                 "Romance|14\nSci-Fi|15\nThriller|16\nWar|17\nWestern|18\n\n");
  c.set_item_path(WriteText(dir.File("u.item"),
                            "242|Kolya (1996)|24-Jan-1997||http://x|0|0|0|0|0|1|0|0|0|0|0|0|0|0|0|0|0|0|0\n"
                            "302|L.A. Confidential (1997)|01-Jan-1997||http://y|0|0|0|0|0|0|1|0|0|0|1|0|0|1|0|0|1|0|0\n"));
  auto log = ReadSource(c);
  ASSERT_TRUE(log.ok()) << log.status();
  EXPECT_EQ(log->interactions.size(), 3u);
  EXPECT_EQ(log->tag_names, (std::vector<std::string>{"Comedy", "Crime", "Film-Noir", "Mystery", "Thriller"}));
  EXPECT_EQ(Tags(*log, 242), (std::vector<int64_t>{1}));
  EXPECT_EQ(Tags(*log, 302), (std::vector<int64_t>{2, 3, 4, 5}));

  WriteText(dir.File("u.item"), "242|Kolya (1996)|24-Jan-1997||http://x|0|0|0|0|0|2|0|0|0|0|0|0|0|0|0|0|0|0|0\n");
  log = ReadSource(c);
  ASSERT_FALSE(log.ok());
  EXPECT_NE(log.status().message().find("u.item:1:"), std::string::npos) << log.status();
}

TEST(ReadSourceTest, SequenceFileHasPositionsAsTimes) {
  TempDir dir;
  DataConfig c;
  c.set_source(DataConfig::ML1M_SEQUENCES);
  c.add_input_paths(WriteGzip(dir.File("seq.txt.gz"), "1 3186 1721 1022\n2 1198 1217\n"));
  auto log = ReadSource(c);
  ASSERT_TRUE(log.ok()) << log.status();
  EXPECT_FALSE(log->has_timestamps);
  ASSERT_EQ(log->interactions.size(), 5u);
  EXPECT_EQ(log->interactions[2].item, 1022);
  EXPECT_EQ(log->interactions[2].time, 2);
  EXPECT_EQ(log->interactions[4].time, 1);

  c.set_input_paths(0, WriteText(dir.File("bad.txt"), "1 3186 x\n"));
  log = ReadSource(c);
  ASSERT_FALSE(log.ok());
  EXPECT_NE(log.status().message().find("bad.txt:1:"), std::string::npos);
}

TEST(ReadSourceTest, MovieTweetingsKeepsImdbIdsAsIntegers) {
  TempDir dir;
  DataConfig c;
  c.set_source(DataConfig::MOVIETWEETINGS);
  c.add_input_paths(WriteText(dir.File("ratings.dat"), "1::1074638::7::1365029107\n2::0104257::8::1364690142\n"));
  c.set_item_path(WriteText(dir.File("movies.dat"), "0104257::A Few Good Men (1992)::Crime|Drama|Thriller\n"
                                                    "1074638::Skyfall (2012)::\n"));
  c.set_min_rating(8);
  auto log = ReadSource(c);
  ASSERT_TRUE(log.ok()) << log.status();
  ASSERT_EQ(log->interactions.size(), 1u);
  EXPECT_EQ(log->interactions[0].item, 104257);
  EXPECT_EQ(Tags(*log, 104257).size(), 3u);
}

// Columns as published for KuaiRand (log_standard_*.csv and video_features_basic_*.csv).
constexpr char kKuaiRandLog[] =
    "user_id,video_id,date,hourmin,time_ms,is_click,is_like,is_follow,is_comment,is_forward,is_hate,long_view,"
    "play_time_ms,duration_ms,profile_stay_time,comment_stay_time,is_profile_enter,is_rand,tab\n"
    "0,100,20220408,1000,1649383200123,1,0,0,0,0,0,1,9000,12000,0,0,0,0,1\n"
    "0,101,20220408,1000,1649383260456,0,0,0,0,0,0,0,100,12000,0,0,0,0,1\n"
    "0,102,20220408,1000,1649383100000,1,0,0,0,0,0,0,5000,12000,0,0,0,0,1\n"
    "0,103,20220408,1000,1649383300000,1,0,0,0,0,0,0,5000,12000,0,0,0,0,2\n"
    "7,100,20220408,1000,1649383400000,1,0,0,0,0,0,0,5000,12000,0,0,0,1,1\n";
constexpr char kKuaiRandVideos[] =
    "video_id,author_id,video_type,upload_dt,upload_type,visible_status,video_duration,server_width,server_height,"
    "music_id,music_type,tag\n"
    "100,5,NORMAL,2022-03-01,ShortImport,public,12000,720,1280,9,4,\"8,12\"\n"
    "102,6,NORMAL,2022-03-01,ShortImport,public,12000,720,1280,9,4,28\n"
    "103,6,NORMAL,2022-03-01,ShortImport,public,12000,720,1280,9,4,\n";

TEST(ReadSourceTest, KuaiRandClicksOnTab1WithTags) {
  TempDir dir;
  DataConfig c;
  c.set_source(DataConfig::KUAIRAND);
  c.add_input_paths(WriteText(dir.File("log_standard_4_08_to_4_21_pure.csv"), kKuaiRandLog));
  c.set_item_path(WriteText(dir.File("video_features_basic_pure.csv"), kKuaiRandVideos));
  auto log = ReadSource(c);
  ASSERT_TRUE(log.ok()) << log.status();
  ASSERT_EQ(log->interactions.size(), 3u);  // non-click and tab 2 rows dropped
  EXPECT_EQ(log->rows_filtered, 2);
  EXPECT_EQ(log->interactions[0].time, 1649383200);  // milliseconds to seconds
  EXPECT_EQ(log->interactions[1].item, 102);
  EXPECT_EQ(Tags(*log, 100), (std::vector<int64_t>{8, 12}));
  EXPECT_EQ(Tags(*log, 102), (std::vector<int64_t>{28}));
  EXPECT_TRUE(Tags(*log, 103).empty());
  EXPECT_TRUE(log->tag_names.empty());

  c.set_first_tag_only(true);
  log = ReadSource(c);
  ASSERT_TRUE(log.ok());
  EXPECT_EQ(Tags(*log, 100), (std::vector<int64_t>{8}));
}

TEST(ReadSourceTest, GenericCsvAndTsvWithColumnMapping) {
  TempDir dir;
  DataConfig c;
  c.set_source(DataConfig::CSV);
  auto* csv = c.mutable_csv();
  csv->set_user_column("uid");
  csv->set_item_column("iid");
  csv->set_time_column("ts");
  csv->set_label_column("rating");
  csv->set_tags_column("genres");
  c.set_min_rating(3);
  c.add_input_paths(WriteText(dir.File("x.csv"), "ts,uid,iid,rating,genres\n10,1,5,4,\"Drama|War\"\n11,1,6,1,Drama\n"
                                                 "12,2,5,5,Drama|War\n"));
  auto log = ReadSource(c);
  ASSERT_TRUE(log.ok()) << log.status();
  ASSERT_EQ(log->interactions.size(), 2u);
  EXPECT_EQ(log->interactions[1].user, 2);
  EXPECT_EQ(log->interactions[1].time, 12);
  EXPECT_EQ(log->tag_names, (std::vector<std::string>{"Drama", "War"}));
  EXPECT_EQ(Tags(*log, 5), (std::vector<int64_t>{1, 2}));

  // TSV without a header: columns by index; no time column means file order.
  DataConfig t;
  t.set_source(DataConfig::CSV);
  t.mutable_csv()->set_delimiter("\\t");
  t.mutable_csv()->set_has_header(false);
  t.mutable_csv()->set_user_column("1");
  t.mutable_csv()->set_item_column("0");
  t.mutable_csv()->set_time_column("");
  t.add_input_paths(WriteText(dir.File("x.tsv"), "5\t1\n6\t1\n7\t2\n"));
  log = ReadSource(t);
  ASSERT_TRUE(log.ok()) << log.status();
  EXPECT_FALSE(log->has_timestamps);
  ASSERT_EQ(log->interactions.size(), 3u);
  EXPECT_EQ(log->interactions[1].item, 6);
  EXPECT_EQ(log->interactions[1].time, 1);
  EXPECT_EQ(log->interactions[2].time, 0);

  // A column that is not in the header is an error naming the file and the column.
  csv->set_item_column("item");
  log = ReadSource(c);
  ASSERT_FALSE(log.ok());
  EXPECT_NE(log.status().message().find("x.csv"), std::string::npos);
  EXPECT_NE(log.status().message().find("\"item\""), std::string::npos);

  // Wrong field count is a malformed line.
  csv->set_item_column("iid");
  c.set_input_paths(0, WriteText(dir.File("y.csv"), "ts,uid,iid,rating,genres\n10,1,5,4\n"));
  log = ReadSource(c);
  ASSERT_FALSE(log.ok());
  EXPECT_NE(log.status().message().find("y.csv:2:"), std::string::npos) << log.status();
}

}  // namespace
}  // namespace t2d::data
