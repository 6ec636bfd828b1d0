// CPU feature detection and ISA dispatch, shared by every CPU kernel.
//
// The library is compiled for the portable baseline ISA; AVX2 and AVX-512 code is
// compiled per function with TTS_AVX2 / TTS_AVX512 (__attribute__((target))) and
// selected at run time. TTS_KERNELS_CPU_ISA caps the ISA (testing):
// "generic" forces the portable code paths, "avx2" stops at AVX2.
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
#define TTS_AVX512 __attribute__((target("avx512f,avx512vl,avx512dq,avx512bw,avx2,fma,f16c")))
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

// AVX-512 F/VL/DQ/BW on top of AVX2 (detected once).
inline bool cpu_has_avx512() {
#if TTS_X86
  static const bool has = [] {
    __builtin_cpu_init();
    return cpu_has_avx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512bw");
  }();
  return has;
#else
  return false;
#endif
}

// The highest ISA TTS_KERNELS_CPU_ISA allows: 0 "generic", 1 "avx2", 2 unset, empty or "avx512"
// (read at every call, so tests can switch it). The Python ops reject other values
// (tts_kernels/_ext.py, check_cpu_isa_env) before calling in.
inline int isa_cap() {
  const char* env = std::getenv("TTS_KERNELS_CPU_ISA");
  if (env == nullptr) return 2;
  if (std::strcmp(env, "generic") == 0) return 0;
  if (std::strcmp(env, "avx2") == 0) return 1;
  return 2;
}

// The AVX2 paths are used: the CPU has them and TTS_KERNELS_CPU_ISA allows them.
inline bool use_avx2() { return isa_cap() >= 1 && cpu_has_avx2(); }

// The AVX-512 paths are used: the CPU has them and TTS_KERNELS_CPU_ISA allows them.
inline bool use_avx512() { return isa_cap() >= 2 && cpu_has_avx512(); }

}  // namespace cpu
}  // namespace tts
