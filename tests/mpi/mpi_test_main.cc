#include "tests/mpi/mpi_test_main.h"

#include <gtest/gtest.h>
#include <mpi.h>

#include <cstdio>
#include <cstring>

#include "comm/mpi_session.h"

namespace t2d::testing {
namespace {

// Prints only failures, prefixed with the rank (rank 0 keeps gtest's normal printer).
class FailurePrinter : public ::testing::EmptyTestEventListener {
 public:
  explicit FailurePrinter(int rank) : rank_(rank) {}
  void OnTestPartResult(const ::testing::TestPartResult& r) override {
    if (r.failed()) {
      std::fprintf(stderr, "[rank %d] %s:%d: Failure\n%s\n", rank_, r.file_name() ? r.file_name() : "?", r.line_number(),
                   r.summary());
    }
  }

 private:
  const int rank_;
};

comm::MpiSession* session_for_tests = nullptr;  // test main only: set while tests run

}  // namespace

comm::MpiSession& TestSession() { return *session_for_tests; }

int RunMpiTests(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  if (::testing::GTEST_FLAG(list_tests)) return RUN_ALL_TESTS();
  auto session = comm::MpiSession::Create(&argc, &argv);
  if (!session.ok()) {
    std::fprintf(stderr, "%s\n", session.status().ToString().c_str());
    return 1;
  }
  session_for_tests = session->get();
  const int rank = (*session)->rank();
  if (rank != 0) {
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
    listeners.Append(new FailurePrinter(rank));
  }
  int result = RUN_ALL_TESTS();
  int worst = 0;
  MPI_Allreduce(&result, &worst, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  session_for_tests = nullptr;
  return worst;
}

}  // namespace t2d::testing
