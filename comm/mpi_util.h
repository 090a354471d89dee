#pragma once
// Small helpers for calling MPI: error codes become absl::Status (the communicators we use are
// set to MPI_ERRORS_RETURN), and a request is polled against a deadline instead of waited on,
// so that no call can block forever. Thread-safety: free functions.

#include <mpi.h>

#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace t2d::comm {

// OK for MPI_SUCCESS; otherwise Internal with `what` and MPI's own error string.
absl::Status MpiStatus(int code, absl::string_view what);

// Polls `*request` with MPI_Test until it completes (OK, *request becomes MPI_REQUEST_NULL) or
// `deadline` passes (DeadlineExceeded with `what`; the request is left active).
absl::Status WaitRequest(MPI_Request* request, absl::Time deadline, absl::string_view what);

}  // namespace t2d::comm
