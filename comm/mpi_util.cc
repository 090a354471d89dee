#include "comm/mpi_util.h"

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "comm/backoff.h"

namespace t2d::comm {

absl::Status MpiStatus(int code, absl::string_view what) {
  if (code == MPI_SUCCESS) return absl::OkStatus();
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  if (MPI_Error_string(code, text, &len) != MPI_SUCCESS) len = 0;
  return absl::InternalError(absl::StrCat(what, ": MPI error ", code, " (", absl::string_view(text, static_cast<size_t>(len)), ")"));
}

absl::Status WaitRequest(MPI_Request* request, absl::Time deadline, absl::string_view what) {
  Backoff backoff;
  while (true) {
    int done = 0;
    if (auto s = MpiStatus(MPI_Test(request, &done, MPI_STATUS_IGNORE), what); !s.ok()) return s;
    if (done) return absl::OkStatus();
    if (absl::Now() >= deadline) return absl::DeadlineExceededError(absl::StrCat(what, ": not complete before the deadline"));
    backoff.Pause();
  }
}

}  // namespace t2d::comm
