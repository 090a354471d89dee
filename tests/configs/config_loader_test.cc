#include "configs/config_loader.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>

namespace t2d::config {
namespace {

const char kBase[] =
    "tables { name: \"item_id\" dim: 2 }\n"
    "tables { name: \"item_tag\" dim: 2 }\n";

std::string Error(const std::string& text, const std::vector<std::string>& overrides = {}) {
  auto c = ParseJobConfig(text, "job.textproto", overrides);
  EXPECT_FALSE(c.ok()) << "accepted:\n" << text;
  return c.ok() ? "" : std::string(c.status().message());
}

TEST(ConfigLoader, EveryExampleLoads) {
  const char* src = std::getenv("T2D_SOURCE_DIR");
  const std::filesystem::path root = src != nullptr ? src : ".";
  // The quality study's configs (bench/quality/run_study.py) too.
  for (const char* dir : {"configs/examples", "configs/quality"}) {
    int n = 0;
    for (const auto& e : std::filesystem::directory_iterator(root / dir)) {
      auto c = LoadJobConfig(e.path().string());
      EXPECT_TRUE(c.ok()) << e.path() << ": " << c.status();
      ++n;
    }
    EXPECT_GT(n, 0) << "no configs found under " << root / dir;
  }
}

TEST(ConfigLoader, DefaultsAreValid) {
  auto c = ParseJobConfig(kBase, "job.textproto");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->training().batch_size(), 512);
  EXPECT_EQ(c->cluster().num_servers(), 1);
  EXPECT_EQ(c->tables(0).optimizer().kind(), SparseOptimizerConfig::ADAGRAD);
  EXPECT_EQ(FindTable(*c, "item_tag"), 1);
  EXPECT_EQ(FindTable(*c, "user"), -1);
}

TEST(ConfigLoader, UnknownFieldNamesFileLineAndField) {
  const std::string e = Error(std::string(kBase) + "training {\n  batch_sise: 3\n}\n");
  EXPECT_NE(e.find("job.textproto:4:"), std::string::npos) << e;
  EXPECT_NE(e.find("batch_sise"), std::string::npos) << e;
}

TEST(ConfigLoader, TypeErrorNamesFileAndLine) {
  const std::string e = Error(std::string(kBase) + "training { batch_size: \"many\" }\n");
  EXPECT_NE(e.find("job.textproto:3:"), std::string::npos) << e;
  EXPECT_NE(e.find("batch_size"), std::string::npos) << e;
  EXPECT_NE(Error(std::string(kBase) + "cluster { consistency: EVENTUAL }\n").find("EVENTUAL"), std::string::npos);
  EXPECT_NE(Error("tables { name: \"x\" dim: 2 \n").find("job.textproto:2"), std::string::npos);
}

TEST(ConfigLoader, OutOfRangeValuesNameFieldAndLine) {
  std::string e = Error("tables { name: \"item_id\" dim: 2 }\ntables {\n name: \"item_tag\"\n dim: 0\n}\n");
  EXPECT_NE(e.find("job.textproto:4: tables[1].dim: value 0 is out of range [1, 4096]"), std::string::npos) << e;
  e = Error(std::string(kBase) + "cluster { timeout_s: 0 }\n");
  EXPECT_NE(e.find("job.textproto:3: cluster.timeout_s: value 0 is out of range (0, inf)"), std::string::npos) << e;
  e = Error(std::string(kBase) + "tables { name: \"u\" dim: 1 optimizer { beta2: 1.5 } }\neval { k: [10, 0] }\n");
  EXPECT_NE(e.find("tables[2].optimizer.beta2: value 1.5 is out of range [0, 1]"), std::string::npos) << e;
  EXPECT_NE(e.find("job.textproto:4: eval.k[1]: value 0"), std::string::npos) << e;  // all errors reported
  e = Error(std::string(kBase) + "training { learning_rate: nan }\n");
  EXPECT_NE(e.find("training.learning_rate: value nan"), std::string::npos) << e;
}

TEST(ConfigLoader, NonFiniteValuesAreRefused) {
  // Every float field, with or without a range: NaN and infinities are never a setting.
  std::string e = Error(std::string(kBase) + "training { learning_rate: inf }\n");
  EXPECT_NE(e.find("job.textproto:3: training.learning_rate: value inf is not a finite number"), std::string::npos) << e;
  e = Error(std::string(kBase) + "data {\n  min_rating: -inf\n}\n");
  EXPECT_NE(e.find("job.textproto:4: data.min_rating: value -inf is not a finite number"), std::string::npos) << e;
  e = Error(kBase, {"model.schedule_b=nan"});
  EXPECT_NE(e.find("--set model.schedule_b=nan: model.schedule_b: value nan is not a finite number"), std::string::npos)
      << e;
}

TEST(ConfigLoader, ModelChecksNameFileLineAndField) {
  std::string e = Error(std::string(kBase) + "model {\n  attention_heads: 3\n}\n");
  EXPECT_NE(e.find("job.textproto:4: model.attention_heads: 3 does not divide the behaviour width D = 4"),
            std::string::npos) << e;
  e = Error(kBase, {"model.inference_reverse_steps=60"});
  EXPECT_NE(e.find("--set model.inference_reverse_steps=60: model.inference_reverse_steps: 60 exceeds diffusion_steps 50"),
            std::string::npos) << e;
  // Nothing set at all: the file is still named.
  e = Error("");
  EXPECT_NE(e.find("job.textproto: model.item_id_table: no table named \"item_id\""), std::string::npos) << e;
}

TEST(ConfigLoader, DenseModelLargerThanThisMachineIsRefused) {
  // D = 8192 with the default 4-level U-Net: about 2e10 dense parameters, hundreds of GB per
  // worker (the exact figure is DenseModelBytesOf's, tests/configs/job_options_test.cc).
  const std::string e = Error("tables { name: \"item_id\" dim: 4096 }\ntables {\n name: \"item_tag\"\n dim: 4096\n}\n");
  EXPECT_NE(e.find("job.textproto:1: model: the dense model (D = 8192, model.unet_levels = 4) has "), std::string::npos)
      << e;
  EXPECT_NE(e.find("of memory; lower the tables' dim, model.unet_levels or model.unet_channels"), std::string::npos) << e;
}

TEST(ConfigLoader, RequiredFields) {
  std::string e = Error("tables { name: \"item_id\" }\ntables { dim: 3 name: \"\" }\nmodel { item_tag_table: \"\" }\n");
  EXPECT_NE(e.find("tables[0].dim: required field is missing"), std::string::npos) << e;
  EXPECT_NE(e.find("job.textproto:2: tables[1].name: required field is empty"), std::string::npos) << e;
}

TEST(ConfigLoader, CrossFieldChecks) {
  std::string e = Error("tables { name: \"item_id\" dim: 2 }\nmodel { item_tag_table: \"genre\" }\n");
  EXPECT_NE(e.find("job.textproto:2: model.item_tag_table: no table named \"genre\" (tables: item_id)"), std::string::npos) << e;
  e = Error(std::string(kBase) + "tables { name: \"item_id\" dim: 4 }\n");
  EXPECT_NE(e.find("job.textproto:3: tables[2].name: duplicate table name \"item_id\""), std::string::npos) << e;
  e = Error(std::string(kBase) + "model { user_id_table: \"users\" }\n");
  EXPECT_NE(e.find("model.user_id_table: no table named \"users\" (tables: item_id, item_tag)"), std::string::npos) << e;
  e = Error(std::string(kBase) + "model { user_id_table: \"item_id\" }\n");
  EXPECT_NE(e.find("model.user_id_table: table \"item_id\" also holds items; users need a table of their own"),
            std::string::npos) << e;
  e = Error(std::string(kBase) + "model { user_feature_table: \"profile\" }\n");
  EXPECT_NE(e.find("model.user_feature_table: no table named \"profile\" (tables: item_id, item_tag)"),
            std::string::npos) << e;
  e = Error(std::string(kBase) + "model { user_feature_table: \"item_id\" }\n");
  EXPECT_NE(e.find("model.user_feature_table: table \"item_id\" also holds items; profile values need a table of "
                   "their own"),
            std::string::npos) << e;
  e = Error(std::string(kBase) + "model { user_feature_table: \"item_tag\" }\n");
  EXPECT_NE(e.find("model.user_feature_table: table \"item_tag\" also holds items"), std::string::npos) << e;
  e = Error(std::string(kBase) + "tables { name: \"users\" dim: 2 }\n" +
            "model { user_id_table: \"users\" user_feature_table: \"users\" }\n");
  EXPECT_NE(e.find("model.user_feature_table: table \"users\" also holds user ids"), std::string::npos) << e;
  e = Error(std::string(kBase) + "data { max_seq_len: 5 session_len: 6 }\n");
  EXPECT_NE(e.find("data.session_len: session_len 6 exceeds max_seq_len 5"), std::string::npos) << e;
  e = Error(std::string(kBase) + "cluster { allreduce_backend: \"gloo\" }\n");
  EXPECT_NE(e.find("unknown backend \"gloo\""), std::string::npos) << e;
  e = Error(std::string(kBase) + "tables { name: \"u\" dim: 1 optimizer { kind: ADAM beta1: 1 } }\n");
  EXPECT_NE(e.find("Adam needs beta1 < 1"), std::string::npos) << e;
  EXPECT_NE(Error("").find("model.item_id_table: no table named \"item_id\""), std::string::npos);
  e = Error(std::string(kBase) + "eval { k: [1, 5] }\n");
  EXPECT_NE(e.find("eval.main_k: main_k 20 is not one of eval.k"), std::string::npos) << e;
}

TEST(ConfigLoader, Overrides) {
  auto c = ParseJobConfig(kBase, "job.textproto",
                          {"training.batch_size=1024", "tables[item_tag].dim=8", "tables[0].optimizer.kind=ADAM",
                           "eval.k=5, 10", "eval.main_k=10", "checkpoint.dir=/tmp/x y", "cluster.consistency=ASYNC"});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->training().batch_size(), 1024);
  EXPECT_EQ(c->tables(1).dim(), 8);
  EXPECT_EQ(c->tables(0).optimizer().kind(), SparseOptimizerConfig::ADAM);
  ASSERT_EQ(c->eval().k_size(), 2);
  EXPECT_EQ(c->eval().k(1), 10);
  EXPECT_EQ(c->checkpoint().dir(), "/tmp/x y");
  EXPECT_EQ(c->cluster().consistency(), ClusterConfig::ASYNC);

  EXPECT_NE(Error(kBase, {"training.batch_sise=3"}).find("--set training.batch_sise=3: message t2d.config.TrainingConfig has no field named \"batch_sise\""), std::string::npos);
  EXPECT_NE(Error(kBase, {"training.batch_size=lots"}).find("bad value \"lots\""), std::string::npos);
  EXPECT_NE(Error(kBase, {"training.batch_size"}).find("expected PATH=VALUE"), std::string::npos);
  EXPECT_NE(Error(kBase, {"tables[user].dim=3"}).find("no element of \"tables\" named \"user\""), std::string::npos);
  EXPECT_NE(Error(kBase, {"tables[7].dim=3"}).find("index 7 out of range"), std::string::npos);
  EXPECT_NE(Error(kBase, {"tables.dim=3"}).find("add [index] or [name]"), std::string::npos);
  EXPECT_NE(Error(kBase, {"training=3"}).find("is a message"), std::string::npos);
  const std::string e = Error(kBase, {"training.batch_size=0"});
  EXPECT_NE(e.find("--set training.batch_size=0: training.batch_size: value 0 is out of range"), std::string::npos) << e;
  // An element named by its name is located at the override too.
  const std::string by_name = Error(kBase, {"tables[item_tag].dim=0"});
  EXPECT_NE(by_name.find("--set tables[item_tag].dim=0: tables[1].dim: value 0 is out of range"), std::string::npos)
      << by_name;
}

TEST(ConfigLoader, MissingFile) {
  auto c = LoadJobConfig("/nonexistent/job.textproto");
  EXPECT_EQ(c.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(c.status().message().find("/nonexistent/job.textproto"), std::string::npos);
}

}  // namespace
}  // namespace t2d::config
