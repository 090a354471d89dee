// The translation of a job config into the lower folders' options (configs/job_options.h).
#include "configs/job_options.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <string>

#include "configs/config_loader.h"
#include "model/model.h"

namespace t2d::config {
namespace {

TEST(JobOptionsTest, ModelDimsFromTheTables) {
  auto job = ParseJobConfig(
      "tables { name: \"item_id\" dim: 6 } tables { name: \"item_tag\" dim: 2 } data { session_len: 4 }", "mem");
  ASSERT_TRUE(job.ok()) << job.status();
  auto dims = ModelDimsOf(*job);
  ASSERT_TRUE(dims.ok()) << dims.status();
  EXPECT_EQ(dims->id_dim, 6);
  EXPECT_EQ(dims->tag_dim, 2);
  EXPECT_EQ(dims->session_len, 4);
  job->mutable_model()->set_attention_heads(3);
  EXPECT_FALSE(ModelDimsOf(*job).ok());
  job->mutable_model()->set_item_tag_table("");
  dims = ModelDimsOf(*job);
  ASSERT_TRUE(dims.ok()) << dims.status();  // D = 6, divisible by 3
  EXPECT_EQ(dims->tag_dim, 0);
}

// The profile fields come from the data set: F = the manifest's field names when
// model.user_feature_table is set (an error naming the field when the data set has none), none
// without it whatever the data set has, and none from the config alone.
TEST(JobOptionsTest, ModelDimsTakeProfileFieldsFromTheDataSet) {
  auto job = ParseJobConfig(
      "tables { name: \"item_id\" dim: 2 } tables { name: \"item_tag\" dim: 2 } tables { name: \"profile\" dim: 3 }"
      " data { dataset_dir: \"/data/ml\" session_len: 4 } model { user_feature_table: \"profile\" }",
      "mem");
  ASSERT_TRUE(job.ok()) << job.status();
  data::DatasetManifest dataset;
  dataset.add_user_feature_names("gender");
  dataset.add_user_feature_names("age");
  auto dims = ModelDimsOf(*job, dataset);
  ASSERT_TRUE(dims.ok()) << dims.status();
  EXPECT_EQ(dims->user_feature_dim, 3);
  EXPECT_EQ(dims->user_fields, 2);
  EXPECT_EQ(dims->id_dim, 2);
  EXPECT_EQ(dims->session_len, 4);
  EXPECT_TRUE(StepBuilderOptionsOf(*job).use_user_features);
  auto model = model::Model::Create(job->model(), *dims);
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_EQ((*model)->Parameters().back().name, "user_profile.linear.weight");
  // The config alone: no profile term.
  auto config_only = ModelDimsOf(*job);
  ASSERT_TRUE(config_only.ok()) << config_only.status();
  EXPECT_EQ(config_only->user_fields, 0);
  EXPECT_EQ(config_only->user_feature_dim, 0);
  // A data set without profile fields: an error naming the field and how to get them.
  data::DatasetManifest none;
  absl::Status s = ModelDimsOf(*job, none).status();
  EXPECT_TRUE(absl::IsInvalidArgument(s)) << s;
  EXPECT_NE(std::string(s.message()).find("model.user_feature_table: \"profile\" is set but the data set (/data/ml) "
                                          "has no user profile fields; prepare it with data.user_path or "
                                          "data.generator.user_profile_fields"),
            std::string::npos)
      << s;
  // No table: the data set's fields are ignored.
  job->mutable_model()->clear_user_feature_table();
  EXPECT_FALSE(StepBuilderOptionsOf(*job).use_user_features);
  dims = ModelDimsOf(*job, dataset);
  ASSERT_TRUE(dims.ok()) << dims.status();
  EXPECT_EQ(dims->user_fields, 0);
  EXPECT_EQ(dims->user_feature_dim, 0);
}

TEST(JobOptionsTest, DenseModelMemory) {
  auto job = ParseJobConfig("tables { name: \"item_id\" dim: 6 } tables { name: \"item_tag\" dim: 2 }", "mem");
  ASSERT_TRUE(job.ok()) << job.status();
  auto dims = ModelDimsOf(*job);
  ASSERT_TRUE(dims.ok()) << dims.status();
  auto model = model::Model::Create(job->model(), *dims);
  ASSERT_TRUE(model.ok()) << model.status();
  auto bytes = DenseModelBytesOf(*job);
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  // Values, gradients and Adam's two moments: 4 floats a parameter.
  EXPECT_EQ(*bytes, static_cast<int64_t>(16 * (*model)->DenseParameters().size()));
  // Without a hostfile all workers (2 by default) share this machine.
  EXPECT_TRUE(CheckDenseModelFits(*job, 2 * *bytes).ok());
  absl::Status s = CheckDenseModelFits(*job, 2 * *bytes - 1);
  EXPECT_TRUE(absl::IsResourceExhausted(s)) << s;
  EXPECT_NE(std::string(s.message()).find("2 workers on this machine"), std::string::npos) << s;
  // With a hostfile a machine holds at least one worker.
  job->mutable_cluster()->set_hostfile("hosts.txt");
  EXPECT_TRUE(CheckDenseModelFits(*job, *bytes).ok());
  EXPECT_FALSE(CheckDenseModelFits(*job, *bytes - 1).ok());
}

TEST(JobOptionsTest, ReaderOptionsFromTheJob) {
  JobConfig job;
  job.mutable_data()->set_max_seq_len(20);
  job.mutable_data()->set_shuffle_buffer(77);
  job.mutable_training()->set_batch_size(64);
  job.mutable_training()->set_epochs(3);
  data::ReaderOptions train = ReaderOptionsOf(job, "train", 1, 2);
  EXPECT_EQ(train.max_seq_len, 20);
  EXPECT_EQ(train.shuffle_buffer, 77);
  EXPECT_EQ(train.batch_size, 64);
  EXPECT_EQ(train.epochs, 3);
  EXPECT_EQ(train.rank, 1);
  EXPECT_TRUE(train.equal_epochs);
  data::ReaderOptions test = ReaderOptionsOf(job, "test", 0, 2);
  EXPECT_EQ(test.epochs, 1);
  EXPECT_EQ(test.shuffle_buffer, 0);
  EXPECT_FALSE(test.equal_epochs);
  job.mutable_eval()->set_batch_size(333);
  EXPECT_EQ(ReaderOptionsOf(job, "valid", 0, 1).batch_size, 333);  // evaluation reads in eval batches
  EXPECT_EQ(ReaderOptionsOf(job, "train", 0, 1).batch_size, 64);
}

TEST(JobOptionsTest, PsOptionsFromTheClusterSection) {
  JobConfig job;
  ClusterConfig& c = *job.mutable_cluster();
  c.set_num_servers(2);
  c.set_num_workers(3);
  c.set_consistency(ClusterConfig::ASYNC);
  c.set_staleness(4);
  c.set_timeout_s(2.5);
  c.set_server_idle_timeout_s(0);
  c.set_pull_piece_bytes(4096);
  auto o = PsOptionsOf(job, comm::RoleAssignment{5, 2, 3});
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->consistency, ps::Consistency::kAsync);
  EXPECT_EQ(o->staleness, 4);
  EXPECT_EQ(o->timeout, absl::Milliseconds(2500));
  EXPECT_EQ(o->idle_timeout, absl::InfiniteDuration());
  EXPECT_EQ(o->max_message_bytes, int64_t{1} << 30);
  EXPECT_EQ(o->pull_piece_bytes, 4096);
  EXPECT_EQ(PsOptionsOf(JobConfig(), comm::RoleAssignment{3, 1, 2})->pull_piece_bytes, ps::PsOptions().pull_piece_bytes);
  auto bad = PsOptionsOf(job, comm::RoleAssignment{4, 2, 2});
  EXPECT_TRUE(absl::IsInvalidArgument(bad.status()));
  EXPECT_NE(std::string(bad.status().message()).find("mpirun -np 5"), std::string::npos) << bad.status();
}

// The example configs parse and validate with the data fields.
TEST(JobOptionsTest, DataExamplesLoad) {
  const char* src = std::getenv("T2D_SOURCE_DIR");
  const std::string root = src != nullptr ? src : ".";
  for (const char* name : {"ml1m.textproto", "synthetic.textproto"}) {
    auto c = LoadJobConfig(root + "/configs/examples/" + name);
    ASSERT_TRUE(c.ok()) << name << ": " << c.status();
    EXPECT_NE(c->data().source(), DataConfig::SOURCE_UNSET);
  }
  // Range options on the new fields are enforced by the loader.
  auto bad = ParseJobConfig(
      "tables { name: \"item_id\" dim: 2 } tables { name: \"item_tag\" dim: 2 } data { num_shards: 0 }", "x.textproto");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("data.num_shards"), std::string::npos) << bad.status();
}

}  // namespace
}  // namespace t2d::config
