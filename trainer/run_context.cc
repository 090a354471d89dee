#include "trainer/run_context.h"

#include <algorithm>

namespace t2d::trainer {

std::vector<int> EvalKs(const config::EvalConfig& eval) {
  std::vector<int> ks(eval.k().begin(), eval.k().end());
  if (ks.empty()) ks = {2, 10, 20, 50};
  return ks;
}

int MainK(const config::EvalConfig& eval) {
  const auto ks = EvalKs(eval);
  return std::find(ks.begin(), ks.end(), eval.main_k()) != ks.end() ? eval.main_k() : ks.back();
}

}  // namespace t2d::trainer
