// CPU feature detection and ISA dispatch, shared by every CPU kernel.
//
// The library is compiled for the portable baseline ISA; AVX2 code is compiled
// per function with TTS_AVX2 (__attribute__((target))) and selected at run time.
// TTS_KERNELS_CPU_ISA=generic forces the portable code paths (testing).
// On non-x86 builds TTS_X86 is 0: no x86 intrinsics are included or compiled,
// and TTS_DISPATCH always takes the portable branch.
#pragma once

#include <cstdlib>
#include <cstring>

#ifndef TTS_X86
#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__)
#define TTS_X86 1
#else
#define TTS_X86 0
#endif
#endif

#if TTS_X86
#define TTS_AVX2 __attribute__((target("avx2,fma,f16c")))
// (avx2 ? fast : portable), the fast expression compiled only on x86.
#define TTS_DISPATCH(avx2, fast, portable) ((avx2) ? (fast) : (portable))
#else
#define TTS_DISPATCH(avx2, fast, portable) (portable)
#endif

namespace tts {
namespace cpu {

// AVX2 + FMA + F16C present (detected once).
inline bool cpu_has_avx2() {
#if TTS_X86
  static const bool has = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
  }();
  return has;
#else
  return false;
#endif
}

// The AVX2 paths are used: the CPU has them and TTS_KERNELS_CPU_ISA is not "generic"
// (read at every call, so tests can switch it).
inline bool use_avx2() {
  const char* env = std::getenv("TTS_KERNELS_CPU_ISA");
  if (env != nullptr && std::strcmp(env, "generic") == 0) return false;
  return cpu_has_avx2();
}

}  // namespace cpu
}  // namespace tts
