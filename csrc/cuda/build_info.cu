// CUDA toolkit version the extension was compiled with (reported by semivl_fast.build_info()).
#include <cuda_runtime_api.h>

namespace semivl_fast {
int cuda_toolkit_version() { return CUDART_VERSION; }
}  // namespace semivl_fast
