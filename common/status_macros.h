#pragma once
// Early-return helpers for absl::Status / absl::StatusOr, the error type used at every module
// boundary (see docs/ARCHITECTURE.md, "Errors").

#include "absl/status/status.h"
#include "absl/status/statusor.h"

// Returns the status from the enclosing function when `expr` is not OK.
#define T2D_RETURN_IF_ERROR(expr)                        \
  do {                                                   \
    ::absl::Status t2d_status_ = (expr);                 \
    if (!t2d_status_.ok()) return t2d_status_;           \
  } while (0)

#define T2D_CONCAT_INNER_(a, b) a##b
#define T2D_CONCAT_(a, b) T2D_CONCAT_INNER_(a, b)

// `T2D_ASSIGN_OR_RETURN(auto x, MakeX());` declares/assigns x from a StatusOr or returns its error.
#define T2D_ASSIGN_OR_RETURN(lhs, expr) \
  T2D_ASSIGN_OR_RETURN_IMPL_(T2D_CONCAT_(t2d_statusor_, __LINE__), lhs, expr)
#define T2D_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                               \
  if (!tmp.ok()) return tmp.status();              \
  lhs = std::move(tmp).value()
