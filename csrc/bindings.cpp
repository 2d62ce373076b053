// Python module semivl_fast._C: build information only. Operators live in the torch.library registry
// (registration.cpp), so loading this module is what makes torch.ops.semivl_fast_C.* available.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

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
