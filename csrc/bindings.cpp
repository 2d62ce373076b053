// Python module semivl_fast._C: build information only. Operators live in the torch.library registry
// (registration.cpp), so loading this module is what makes torch.ops.semivl_fast_C.* available.
#include <ATen/Parallel.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <atomic>
#include <string>
#include <vector>

#ifdef WITH_CUDA
namespace semivl_fast {
int cuda_toolkit_version();  // defined in cuda/build_info.cu
}
#endif

namespace py = pybind11;

PYBIND11_MODULE(_C, m) {
  m.doc() = "semivl_fast C++/CUDA kernels (operators are registered under torch.ops.semivl_fast_C)";
#ifdef WITH_CUDA
  m.def("has_cuda", [] { return true; });
  m.def("cuda_version", [] { return semivl_fast::cuda_toolkit_version(); });
#else
  m.def("has_cuda", [] { return false; });
  m.def("cuda_version", [] { return 0; });
#endif
  // How many threads an at::parallel_for in this module's own code runs on: 1 when it was built without OpenMP
  // (the region is inline in ATen's headers), at::get_num_threads() when the CPU kernels really run in parallel.
  m.def("parallel_for_threads", [] {
    std::atomic<int> most{0};
    at::parallel_for(0, 64 * at::get_num_threads(), 1, [&](int64_t, int64_t) {
      const int t = at::get_thread_num() + 1;
      for (int seen = most.load(); seen < t && !most.compare_exchange_weak(seen, t);) {
      }
    });
    return most.load();
  });
  m.def("compiler", [] {
#if defined(__clang__)
    return std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
    return std::string("gcc ") + __VERSION__;
#else
    return std::string("unknown");
#endif
  });
}
