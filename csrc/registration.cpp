// Schemas of every C++ operator (namespace semivl_fast_C), in one place. The kernels register their
// implementations per dispatch key next to the code (TORCH_LIBRARY_IMPL in cpu/<op>.cpp and cuda/<op>.cu), so no
// device's file depends on another's. The public ops (namespace semivl_fast, see semivl_fast/ops/<op>.py) are
// torch.library custom ops that allocate the outputs and call these.
#include <torch/library.h>

TORCH_LIBRARY(semivl_fast_C, m) {
  // ---- cost_volume (cpu/cost_volume.cpp)
  // Writes out (B, K, H, W): cosine similarity of every pixel of image (B, C, H, W) with every unit text row
  // (R, C); with groups (R,) the max over each class's rows (K = num_classes), else K = R.
  m.def("cost_volume_forward_(Tensor image, Tensor text, Tensor? groups, int num_classes, Tensor(a!) out) -> ()");
  // Writes the gradients of the image and/or the text rows for the upstream gradient grad (B, K, H, W).
  m.def(
      "cost_volume_backward_(Tensor grad, Tensor image, Tensor text, Tensor? groups, int num_classes, "
      "Tensor(a!)? grad_image, Tensor(b!)? grad_text) -> ()");

  // ---- class_attention (cpu/class_attention.cpp)
  // q, k, v, out: (S, H, N, D) views, unit stride along D; lse: (S, H, N) contiguous, float64 for float64 inputs
  // and float32 otherwise. Writes out = softmax(scale q k^T) v and lse = logsumexp(scale q k^T) per row.
  m.def(
      "class_attention_forward_(Tensor q, Tensor k, Tensor v, float scale, Tensor(a!) out, Tensor(b!) lse) -> ()");
  // Writes grad_q, grad_k, grad_v (views like q; they may be slices of one packed buffer) from grad_out and the
  // forward's out and lse; P is recomputed.
  m.def(
      "class_attention_backward_(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, "
      "float scale, Tensor(a!) grad_q, Tensor(b!) grad_k, Tensor(c!) grad_v) -> ()");
  // The instruction set the CPU kernels use now (after SEMIVL_FAST_CPU_ISA): generic, avx2 or avx512.
  m.def("class_attention_cpu_isa() -> str");

  // ---- pseudo_label_loss (cpu/pseudo_label_loss.cpp, cuda/pseudo_label_loss.cu)
  // Writes per pixel (B, H, W) of the crop the student's logsumexp (lse, accumulation dtype: float64 for float64
  // students, else float32; 0 where not accepted) and code (int32: the label where the pixel is accepted, -1
  // elsewhere), and per image row rows (B, H, 4) float64 = [sum of ce over accepted pixels, valid pixels, accepted
  // pixels, sum of teacher confidence over valid pixels], for the student logits (B, N, h, w) upsampled to (H, W).
  m.def(
      "pseudo_label_loss_forward_(Tensor student, int H, int W, Tensor? target, Tensor? teacher, "
      "Tensor? teacher_mix, Tensor? boxes, Tensor? ignore, Tensor? ignore_mix, float threshold, float scale, "
      "bool use_threshold, Tensor(a!) lse, Tensor(b!) code, Tensor(c!) rows) -> ()");
  // Writes grad (B, N, h, w) in the student's dtype: the adjoint of the bilinear upsampling of
  // gscale[b] * (softmax - onehot(code)) over the accepted pixels.
  m.def(
      "pseudo_label_loss_backward_(Tensor student, Tensor lse, Tensor code, Tensor gscale, Tensor(a!) grad) -> ()");
  // The path the CPU kernel takes now: avx2, vec1 or pixel (SEMIVL_FAST_PSEUDO_LABEL_LOSS_CPU and the CPU decide).
  m.def("pseudo_label_loss_cpu_path() -> str");
}
