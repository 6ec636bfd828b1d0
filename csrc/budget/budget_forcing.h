// Budget forcing (s1, "Simple test-time scaling"): the per-row state layout and
// the two steps of one decode step, `plan` (before the draw) and `advance`
// (after it). The one C++ copy of the state machine: CPU kernels include it
// today; it is written so that a CUDA kernel can include it too (no ATen, no
// std:: containers, functions behind TTS_HOST_DEVICE).
//
// The layout must match tts_kernels/sampling/budget.py (MIN_TOKENS .. STOP,
// STATE_COLUMNS, THINKING / ENDING / DONE) and the constants the Triton kernel
// reads (tts_kernels/sampling/triton_kernel.py); tests/test_budget_layout.py
// parses this file and checks the three agree. The rules are documented in
// budget.py; the reference implementation is tts_kernels/sampling/reference.py.
#pragma once

#include <stdint.h>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define TTS_HOST_DEVICE __host__ __device__
#else
#define TTS_HOST_DEVICE
#endif

namespace tts {
namespace budget {

// Columns of a row of the int32 state tensor [B, kStateColumns].
enum Column : int {
  kMinTokens = 0,    // thinking tokens required before an end is allowed
  kMaxTokens = 1,    // thinking tokens after which the end is forced (< 0: no budget)
  kMinWaits = 2,     // forced "Wait" insertions required before an end is allowed
  kNumThinking = 3,  // tokens emitted while thinking (forced Wait tokens included)
  kWaitsUsed = 4,    // Wait insertions so far
  kPhase = 5,        // a Phase
  kPos = 6,          // next index into forced_ids to emit while pos < stop
  kStop = 7,         // end (exclusive) of the pending forced run in forced_ids
  kStateColumns = 8,
};

// Values of the kPhase column.
enum Phase : int32_t {
  kThinking = 0,  // thinking
  kEnding = 1,    // emitting the end sequence (and, when forced, the answer prefix)
  kDone = 2,      // done: the row samples normally
};

// forced_ids = wait_ids ++ end_think_ids ++ answer_prefix_ids (length >= num_wait + num_end >= 1).
struct ForcedIds {
  const int32_t* ids;
  int64_t length, num_wait, num_end;
};

// What a row does this step, decided from its state before the draw.
struct Plan {
  bool force_end;      // rule 1: the maximum is reached, end[0] is emitted
  bool pending;        // rule 2: a forced run is pending, ids[pos] is emitted
  bool free;           // rule 3: the token is drawn
  bool need;           // (free) an end is not allowed yet
  bool mask_end;       // (need, no Wait sequence) end[0] gets probability 0 in the draw
  int64_t forced_tok;  // the forced token, or -1: draw
  int64_t end0;        // end_think_ids[0]
};

// The plan of a row without budget forcing: draw, no state update.
TTS_HOST_DEVICE inline Plan no_budget() {
  Plan p;
  p.force_end = p.pending = p.free = p.need = p.mask_end = false;
  p.forced_tok = -1;
  p.end0 = -1;
  return p;
}

TTS_HOST_DEVICE inline Plan plan(const int32_t* st, const ForcedIds& f) {
  Plan p;
  p.end0 = f.ids[f.num_wait];
  const int32_t ph = st[kPhase];
  const bool active = st[kMaxTokens] >= 0 && ph != kDone;
  p.force_end = active && ph == kThinking && st[kNumThinking] >= st[kMaxTokens];
  p.pending = active && !p.force_end && st[kPos] < st[kStop];
  p.free = active && !p.force_end && !p.pending;
  p.need = p.free && (st[kNumThinking] < st[kMinTokens] || st[kWaitsUsed] < st[kMinWaits]);
  p.mask_end = p.need && f.num_wait == 0;
  p.forced_tok = -1;
  if (p.force_end) {
    p.forced_tok = p.end0;
  } else if (p.pending) {
    int64_t sp = st[kPos];
    sp = sp < 0 ? 0 : (sp > f.length - 1 ? f.length - 1 : sp);
    p.forced_tok = f.ids[sp];
  }
  return p;
}

// Rule 3 and the state update of a valid row that emits `tok` (the forced or
// drawn token); returns the token actually emitted (a disallowed end[0] is
// replaced by wait[0]). The state is updated in place.
TTS_HOST_DEVICE inline int64_t advance(int32_t* st, const Plan& p, const ForcedIds& f, int64_t tok) {
  const int32_t ph = st[kPhase], pos = st[kPos], stop = st[kStop];
  const bool is_end = p.free && tok == p.end0;
  const bool replace = is_end && p.need;
  const bool natural_end = is_end && !p.need;
  if (f.num_wait > 0 && replace) tok = f.ids[0];
  const bool forced_pending_wait = p.pending && ph == kThinking;
  const int32_t lw = static_cast<int32_t>(f.num_wait), le = static_cast<int32_t>(f.num_end);
  const int32_t la = static_cast<int32_t>(f.length) - lw - le;
  int32_t new_pos = p.pending ? pos + 1 : pos;
  int32_t new_stop = stop;
  if (p.force_end || natural_end) new_pos = lw + 1;
  if (p.force_end) new_stop = lw + le + la;
  if (natural_end) new_stop = lw + le;
  if (replace) {
    new_pos = 1;
    new_stop = lw;
  }
  int32_t new_ph = ph;
  if (p.force_end || natural_end) new_ph = kEnding;
  if (new_ph == kEnding && new_pos >= new_stop) new_ph = kDone;
  st[kNumThinking] += static_cast<int32_t>(p.free && !natural_end) + static_cast<int32_t>(forced_pending_wait);
  st[kWaitsUsed] += static_cast<int32_t>(replace);
  st[kPhase] = new_ph;
  st[kPos] = new_pos;
  st[kStop] = new_stop;
  return tok;
}

}  // namespace budget
}  // namespace tts
