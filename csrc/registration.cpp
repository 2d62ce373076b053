// Schemas of the C++ operators (namespace semivl_fast_C). Implementations register per device in cpu/ and cuda/.
// The public ops (namespace semivl_fast, see semivl_fast/ops) are torch.library custom ops that call these.
#include <torch/library.h>

TORCH_LIBRARY(semivl_fast_C, m) {
  // Writes conf, label and keep (all (B, H, W)) for logits (B, N, H, W).
  m.def(
      "pseudo_label_filter_(Tensor logits, float threshold, float scale, Tensor? ignore, "
      "Tensor(a!) conf, Tensor(b!) label, Tensor(c!) keep) -> ()");
}
