#pragma once
// Helpers for the data tests: a fresh temporary folder per test and small file writers.

#include <gtest/gtest.h>
#include <zlib.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

namespace t2d::data::testing {

// A new empty folder under the test temp dir, removed when the object goes away.
class TempDir {
 public:
  TempDir() {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    path_ = std::filesystem::path(::testing::TempDir()) /
            (std::string("t2d_data_") + info->test_suite_name() + "_" + info->name() + "_" + std::to_string(::getpid()));
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  std::string File(const std::string& name) const { return (path_ / name).string(); }
  std::string path() const { return path_.string(); }

 private:
  std::filesystem::path path_;
};

inline std::string WriteText(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
  return path;
}

inline std::string WriteGzip(const std::string& path, const std::string& text) {
  gzFile f = gzopen(path.c_str(), "wb");
  gzwrite(f, text.data(), static_cast<unsigned>(text.size()));
  gzclose(f);
  return path;
}

// ../shared/data relative to the source tree (CTest sets T2D_SOURCE_DIR), or "" if absent.
inline std::string SharedDataDir() {
  const char* src = std::getenv("T2D_SOURCE_DIR");
  const std::string root = src != nullptr ? src : ".";
  const std::string dir = root + "/../shared/data";
  return std::filesystem::exists(dir) ? dir : "";
}

}  // namespace t2d::data::testing
