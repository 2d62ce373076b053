// Portability macros shared by the CPU (.cpp) and CUDA (.cu) translation units.
#pragma once

#if defined(__CUDACC__)
#define SVF_HD __host__ __device__ __forceinline__
#else
#define SVF_HD inline
#endif
