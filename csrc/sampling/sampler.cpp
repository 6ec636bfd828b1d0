// Fused CPU sampler: budget forcing + temperature / top-k / top-p / min-p
// sampling with a two-level Philox Gumbel-max draw, one row at a time.
//
// Semantics: tts_kernels/sampling/reference.py (this kernel must agree with it).
//
// Per row (x = float32 logits, z = x / T):
//   1. one stats pass: max, NaN/+inf detection, maxima of 64-token blocks and
//      the sum of exp(x - max) (running max, rescaled when it grows) for the logprob
//      (only when the call returns logprobs: out_lp not null)
//   2. budget rules 1-2 (forced tokens) and rule 3's masking of end[0]
//   3. draw:
//      - greedy: first index of the maximum
//      - the keep rule: top-k: the k-th largest block maximum bounds the k-th
//        largest logit from below; only logits >= that bound (about k of them)
//        are gathered and the threshold is selected among them (nth_element).
//        Small kept sets then finish on the gathered list (sort of <= 4096
//        values for top-p, then the draw below on the list, grouped by index).
//        top-p over a large set: one pass computes e = exp(z - zmax) and a
//        4096-bin histogram of the mass over (zmax - z); the bin where the
//        cumulative mass reaches top_p is located, only its tokens are sorted.
//        min-p: exp(z - zmax) >= min_p, checked where a token is looked at.
//      - the two-level draw (reference.draw): groups of kGroupSize = 256 tokens
//        score m + log(sum of exp(z - m)) over their kept tokens (m: the largest
//        kept z) + group noise (Philox stream 1); the first best group is chosen,
//        then in it the first maximum of z + token noise (stream 0) over its
//        kept tokens. Only some groups are summed: from the block maxima, a
//        group's score is at most max z + log(tokens in blocks that can hold a
//        kept token) + its noise; the group of the row maximum and the group of
//        the largest bound are summed first, then only the groups whose bound
//        reaches the best score so far (less a rounding margin), so the chosen
//        group is the same as with every group summed.
//   4. budget state update (rule 3 and the state machine), in place.
// Rows run in parallel (the shared scheduler, common/parallel.h); with fewer
// rows than threads the passes of a row are split into chunks that run in
// parallel instead (the stats and histogram passes over the row, the group sums
// over the groups left after pruning).
//
// This file holds the row algorithm on raw pointers (no ATen); the passes are in
// sampler_passes.cpp, the ATen adapter in sample_adapter.cpp.
#include "sampler.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <vector>

#include "budget/budget_forcing.h"
#include "common/cpu_features.h"
#include "common/parallel.h"
#include "sampler_passes.h"

namespace tts_sampling {
namespace budget = tts::budget;
namespace {

template <class F>
static void par_for(int64_t n, const F& fn) {
  tts::cpu::parallel_for(n, fn);
}

// ---------------------------------------------------------------------------
// Chunking of one row's passes (parallel when the batch is smaller than the pool)
// ---------------------------------------------------------------------------
struct Chunks {
  int64_t n, size, count;
  template <class F>
  void run(F&& f) const {  // f(chunk, begin, end)
    if (count == 1) {
      f(int64_t{0}, int64_t{0}, n);
      return;
    }
    par_for(count, [&](int64_t c) { f(c, c * size, std::min(n, (c + 1) * size)); });
  }
};

static Chunks make_chunks(int64_t n, bool par) {
  if (!par) return {n, std::max<int64_t>(n, 1), 1};
  const int64_t nt = tts::cpu::num_threads();
  int64_t size = (n + 4 * nt - 1) / (4 * nt);
  size = std::max<int64_t>(size, 8192);
  size = (size + kBlock - 1) / kBlock * kBlock;
  return {n, size, (n + size - 1) / size};
}

struct Scratch {
  std::vector<float> xf, bmax, fvals;
  std::vector<float> gnoise, gbound;  // per group: noise, upper bound of the score
  std::vector<Cand> cands;
  std::vector<int32_t> idx, kept, groups;
  std::vector<double> hist;
};

static Scratch& scratch() {
  thread_local Scratch s;
  return s;
}

struct Ctx : SamplerParams {
  Ops ops;
};

static float logit_at(const Ctx& c, int64_t r, int64_t i) {
  const int64_t o = r * c.ld + i;
  switch (c.dtype) {
    case tts::DType::kFloat32: return static_cast<const float*>(c.logits)[o];
    case tts::DType::kBFloat16: return tts::bf16_to_float(static_cast<const uint16_t*>(c.logits)[o]);
    default: return tts::f16_to_float(static_cast<const uint16_t*>(c.logits)[o]);
  }
}

// max, NaN flag, block maxima of x (into s.bmax) and, with with_sum, the sum of exp(x - max) (else 0).
static void row_stats(const Ctx& c, Scratch& s, const float* x, const Chunks& ch, float& mx, bool& nan,
                      double& sum, bool with_sum) {
  const int64_t nblocks = (c.V + kBlock - 1) / kBlock;
  s.bmax.resize(nblocks);
  std::vector<float> pm(ch.count);
  std::vector<char> pn(ch.count);
  std::vector<double> ps(ch.count);
  float* bm = s.bmax.data();
  ch.run([&](int64_t k, int64_t b, int64_t e) {
    bool n = false;
    c.ops.stats(x, b, e, bm, pm[k], n, ps[k], with_sum);
    pn[k] = n;
  });
  mx = -kInf;
  nan = false;
  for (int64_t k = 0; k < ch.count; ++k) {
    mx = std::max(mx, pm[k]);
    nan |= pn[k] != 0;
  }
  sum = 0.0;
  if (mx > -kInf && mx < kInf)
    for (int64_t k = 0; k < ch.count; ++k)
      if (pm[k] > -kInf) sum += ps[k] * std::exp(static_cast<double>(pm[k]) - static_cast<double>(mx));
}

// ---------------------------------------------------------------------------
// The two-level draw (reference.draw)
// ---------------------------------------------------------------------------
// A group's score from its kept maximum and sum (float, as reference.draw_scores).
static inline float group_score(const GroupSum& g, float noise) { return (g.m + std::log(g.s)) + noise; }

// Rounding allowance of the group pruning: the computed score of a group stays
// below its computed bound plus this (sums of <= 256 terms <= 1 in float, a few
// roundings of the score's magnitude).
static inline float prune_margin(float s) { return 1e-3f + 2e-5f * std::fabs(s); }

// The draw over an explicit list of the kept tokens (any order; sorted here),
// grouped by index; tokens with a non-finite z are not kept.
static int64_t draw_list(const float* x, float T, std::vector<int32_t>& ids, const PhiloxKey& key) {
  std::sort(ids.begin(), ids.end());
  const int64_t n = static_cast<int64_t>(ids.size());
  Best g;
  int64_t gb = 0, ge = 0;  // the chosen group's run in ids
  for (int64_t i = 0; i < n;) {
    const int64_t j = ids[i] / kGroupSize;
    int64_t e = i;
    GroupSum gs;
    for (; e < n && ids[e] / kGroupSize == j; ++e) {
      const float z = x[ids[e]] / T;
      if (z <= kFloatMax && z > gs.m) gs.m = z;
    }
    if (gs.m > -kInf) {
      double acc = 0.0;
      for (int64_t q = i; q < e; ++q) {
        const float z = x[ids[q]] / T;
        if (z <= kFloatMax) acc += static_cast<double>(std::exp(z - gs.m));
      }
      gs.s = static_cast<float>(acc);
      merge_best(g, Best{group_score(gs, group_gumbel_scalar(j, key)), j});
      if (g.i == j) {
        gb = i;
        ge = e;
      }
    }
    i = e;
  }
  Best t;
  for (int64_t q = gb; q < ge; ++q) {
    const int64_t v = ids[q];
    const float z = x[v] / T;
    if (z >= -kFloatMax && z <= kFloatMax) merge_best(t, Best{z + gumbel_scalar(v, key), v});
  }
  return t.i < 0 ? 0 : t.i;
}

// The draw over the whole row under keep rule a; s.bmax holds the block maxima
// of a.x, whose maximum is xmax.
static int64_t draw_groups(const Ctx& c, Scratch& s, const KeepRule& a, float xmax, const Chunks& ch) {
  constexpr int64_t kBpg = kGroupSize / kBlock;  // blocks per group
  static const std::array<float, kBpg + 1> kLogCap = [] {  // log of the tokens in n blocks
    std::array<float, kBpg + 1> t{};
    for (int64_t n = 1; n <= kBpg; ++n) t[n] = std::log(static_cast<float>(n * kBlock));
    return t;
  }();
  const int64_t ng = (a.V + kGroupSize - 1) / kGroupSize;
  const int64_t nblocks = static_cast<int64_t>(s.bmax.size());
  s.gnoise.resize((ng + 31) / 32 * 32);
  c.ops.group_noise(a.key, ng, s.gnoise.data());
  const float* noise = s.gnoise.data();

  // Upper bounds of the group scores: a block can hold a kept token only if its
  // maximum z reaches the keep threshold (for min-p, a bound below its exact test).
  const float blo = a.minp_on ? std::max(a.lo, a.zmax + std::log(a.min_p) - (1e-3f + 1e-6f * std::fabs(a.zmax)))
                              : a.lo;
  s.gbound.resize(ng);
  float* ub = s.gbound.data();
  int64_t g1 = -1;  // the group with the largest bound
  for (int64_t j = 0; j < ng; ++j) {
    float gm = -kInf;
    int nb = 0;
    for (int64_t b = j * kBpg, e = std::min(nblocks, b + kBpg); b < e; ++b) {
      const float bz = s.bmax[b] / a.T;
      if (bz >= blo) {
        gm = std::max(gm, bz);
        ++nb;
      }
    }
    ub[j] = nb > 0 ? (gm + kLogCap[nb]) + noise[j] : -kInf;
    if (nb > 0 && (g1 < 0 || ub[j] > ub[g1])) g1 = j;
  }
  if (g1 < 0) return 0;  // nothing kept

  auto score = [&](int64_t j) {
    const GroupSum g = c.ops.group_sum(a, j);
    return g.m > -kInf ? Best{group_score(g, noise[j]), j} : Best{};
  };
  // Lower bound first: the groups of the largest bound and of the row maximum
  // (which holds a kept token unless nothing is kept).
  int64_t b0 = 0;
  while (b0 < nblocks && !(s.bmax[b0] == xmax)) ++b0;
  const int64_t g0 = std::min(b0 / kBpg, ng - 1);
  Best best = score(g1);
  if (g0 != g1) merge_best(best, score(g0));

  s.groups.clear();
  const float cut = best.s - prune_margin(best.s);
  for (int64_t j = 0; j < ng; ++j)
    if (j != g0 && j != g1 && ub[j] > -kInf && !(ub[j] < cut)) s.groups.push_back(static_cast<int32_t>(j));
  const int32_t* cand = s.groups.data();
  auto scan = [&](int64_t b, int64_t e) {
    Best loc = best;
    for (int64_t q = b; q < e; ++q) {
      const int64_t j = cand[q];
      if (ub[j] < loc.s - prune_margin(loc.s)) continue;
      merge_best(loc, score(j));
    }
    return loc;
  };
  const int64_t n = static_cast<int64_t>(s.groups.size());
  if (ch.count > 1 && n >= 32) {
    const int64_t np = std::min<int64_t>(ch.count, n / 16);
    std::vector<Best> parts(np);
    par_for(np, [&](int64_t q) { parts[q] = scan(q * n / np, (q + 1) * n / np); });
    for (const Best& p : parts) merge_best(best, p);
  } else {
    best = scan(0, n);
  }
  if (best.i < 0) return 0;
  const Best t = c.ops.group_token(a, best.i);
  return t.i < 0 ? 0 : t.i;
}

static void sort_desc(std::vector<Cand>& v) {
  std::sort(v.begin(), v.end(), [](const Cand& a, const Cand& b) { return a.z > b.z; });
}

// Top-p threshold on candidates sorted by z descending: the first z whose
// cumulative mass (accumulated in double from cum0, compared in float) reaches target.
static float top_p_walk(const std::vector<Cand>& cs, double cum0, float target) {
  double cum = cum0;
  for (const Cand& q : cs) {
    cum += q.e;
    if (static_cast<float>(cum) >= target) return q.z;
  }
  return cs.empty() ? kInf : cs.back().z;
}

// Sampled row on a small explicit set S (all with z >= t_k), indices in s.idx.
static int64_t finish_small(Scratch& s, const float* x, float T, float zmax, float p, bool p_on, float mp, bool m_on,
                            const PhiloxKey& key) {
  auto& cs = s.cands;
  cs.clear();
  double total = 0.0;
  for (int32_t v : s.idx) {
    const float z = x[v] / T;
    const float e = std::exp(z - zmax);
    cs.push_back({z, e, v});
  }
  sort_desc(cs);
  for (const Cand& q : cs) total += q.e;
  const float tp = p_on ? top_p_walk(cs, 0.0, p * static_cast<float>(total)) : -kInf;
  s.kept.clear();
  for (const Cand& q : cs) {
    if (q.z < tp) break;
    if (m_on && !(q.e >= mp)) continue;
    s.kept.push_back(q.i);
  }
  return draw_list(x, T, s.kept, key);
}

// Draw of a sampled row (not greedy_row(T, xmax)) from float logits x with maximum xmax.
static int64_t draw_row(const Ctx& c, Scratch& s, int64_t r, const float* x, float xmax, const Chunks& ch) {
  const int64_t V = c.V;
  const float T = c.temperature[r];
  const int64_t k = c.top_k[r];
  const float p = c.top_p[r];
  const float mp = c.min_p[r];
  const bool k_on = k > 0 && k < V;
  const bool p_on = p < 1.0f;
  const bool m_on = mp > 0.0f;
  const PhiloxKey key = make_key(c.seed[r], c.offset[r]);
  const float zmax = xmax / T;

  // ---- top-k threshold -----------------------------------------------------
  float tk = -kInf;
  if (k_on) {
    const int64_t nblocks = static_cast<int64_t>(s.bmax.size());
    float xk;
    bool have_set = false;
    const int64_t nb8 = (V + 7) / 8;
    if (k <= nb8) {
      // The k-th largest block maximum is <= the k-th largest logit (the k
      // blocks with the largest maxima hold k distinct logits at least that
      // large): blocks of 64 from the stats pass, or of 8 for larger k.
      if (k <= nblocks) {
        s.fvals.assign(s.bmax.begin(), s.bmax.end());
      } else {
        s.fvals.resize(nb8);
        for (int64_t j = 0; j < nb8; ++j) {
          float m = -kInf;
          for (int64_t i = 8 * j, t = std::min(V, 8 * j + 8); i < t; ++i) m = x[i] > m ? x[i] : m;
          s.fvals[j] = m;
        }
      }
      std::nth_element(s.fvals.begin(), s.fvals.begin() + (k - 1), s.fvals.end(), std::greater<float>());
      const float lo = s.fvals[k - 1];
      s.idx.clear();
      c.ops.collect_ge(x, V, lo, s.idx);
      s.fvals.resize(s.idx.size());
      for (size_t j = 0; j < s.idx.size(); ++j) s.fvals[j] = x[s.idx[j]];
      std::nth_element(s.fvals.begin(), s.fvals.begin() + (k - 1), s.fvals.end(), std::greater<float>());
      xk = s.fvals[k - 1];
      tk = xk / T;
      if (lo / T >= tk) {
        // z ties at the threshold may lie below the bound: take the full set.
        s.idx.clear();
        for (int64_t i = 0; i < V; ++i)
          if (x[i] / T >= tk) s.idx.push_back(static_cast<int32_t>(i));
      } else {
        size_t m = 0;
        for (int32_t v : s.idx)
          if (x[v] / T >= tk) s.idx[m++] = v;
        s.idx.resize(m);
      }
      have_set = true;
    } else {
      s.fvals.assign(x, x + V);
      std::nth_element(s.fvals.begin(), s.fvals.begin() + (k - 1), s.fvals.end(), std::greater<float>());
      xk = s.fvals[k - 1];
      tk = xk / T;
      s.idx.clear();
      have_set = c.ops.collect_kept(x, V, T, tk, s.idx, static_cast<size_t>(kSmallSet));
    }
    if (have_set && static_cast<int64_t>(s.idx.size()) <= kSmallSet)
      return finish_small(s, x, T, zmax, p, p_on, mp, m_on, key);
  }

  // ---- top-p threshold over a large set ---------------------------------------
  float thr = tk;
  if (p_on) {
    const int64_t nh = kNumBins;
    s.hist.assign(ch.count * nh, 0.0);
    double* hh = s.hist.data();
    ch.run([&](int64_t q, int64_t b, int64_t e) { c.ops.hist(x, b, e, T, zmax, tk, hh + q * nh); });
    for (int64_t q = 1; q < ch.count; ++q)
      for (int i = 0; i < kNumBins; ++i) hh[i] += hh[q * nh + i];
    double total = 0.0;
    for (int i = 0; i < kNumBins; ++i) total += hh[i];
    const float target = p * static_cast<float>(total);
    // First bin (from the top) where the cumulative mass reaches the target.
    double cum = 0.0;
    int bsel = -1;
    for (int i = 0; i < kNumBins; ++i) {
      if (!(hh[i] > 0.0)) continue;
      if (static_cast<float>(cum + hh[i]) >= target) {
        bsel = i;
        break;
      }
      cum += hh[i];
    }
    if (bsel < 0) {  // rounding: take the last bin with mass
      cum = 0.0;
      for (int i = 0; i < kNumBins; ++i)
        if (hh[i] > 0.0) bsel = i;
      for (int i = 0; i < bsel; ++i) cum += hh[i];
    }
    // Tokens of the crossing bin, sorted by z descending.
    auto& cs = s.cands;
    cs.clear();
    c.ops.collect_bin(x, V, T, zmax, tk, bsel, cs);
    sort_desc(cs);
    const float tp = top_p_walk(cs, cum, target);
    thr = std::max(tp, tk);
  }

  // ---- the two-level draw over the row ----------------------------------------------
  const KeepRule a{x, V, T, std::max(thr, -kFloatMax), m_on, zmax, mp, key};
  return draw_groups(c, s, a, xmax, ch);
}

static void process_row(const Ctx& c, int64_t r, bool par) {
  Scratch& s = scratch();
  const int64_t V = c.V;
  const Chunks ch = make_chunks(V, par);

  // ---- float row, stats, validity, logsumexp --------------------------------------
  const float* x;
  if (c.dtype == tts::DType::kFloat32) {
    x = static_cast<const float*>(c.logits) + r * c.ld;
  } else {
    s.xf.resize(V);
    const char* src = static_cast<const char*>(c.logits) + r * c.ld * 2;
    float* dst = s.xf.data();
    ch.run([&](int64_t, int64_t b, int64_t e) { c.ops.to_float(c.dtype, src, dst, b, e); });
    x = dst;
  }
  float xmax;
  bool nan;
  double se;
  row_stats(c, s, x, ch, xmax, nan, se, c.out_lp != nullptr);
  const float T = c.temperature[r];
  bool valid = !nan && xmax > -kInf && xmax < kInf && !std::isnan(T);
  if (!valid) {
    c.out_tok[r] = -1;
    if (c.out_lp != nullptr) c.out_lp[r] = std::numeric_limits<float>::quiet_NaN();
    return;
  }
  const float lse = xmax + static_cast<float>(std::log(se));

  // ---- budget rules 1 and 2, rule 3's masking (csrc/budget/budget_forcing.h) ---------
  int32_t* st = c.budget != nullptr ? c.budget + r * budget::kStateColumns : nullptr;
  const budget::ForcedIds fids{c.forced, c.L, c.num_wait, c.num_end};
  const budget::Plan bp = st != nullptr ? budget::plan(st, fids) : budget::no_budget();
  const int64_t end0 = bp.end0, forced_tok = bp.forced_tok;

  int64_t tok = forced_tok;
  if (tok < 0) {
    const float* xd = x;
    float dmax = xmax;
    if (bp.mask_end) {  // an early end gets probability 0
      if (x != s.xf.data()) {
        s.xf.resize(V);
        std::memcpy(s.xf.data(), x, V * sizeof(float));
      }
      s.xf[end0] = -kInf;
      xd = s.xf.data();
      bool n2;
      double se2;
      row_stats(c, s, xd, ch, dmax, n2, se2, false);
      if (!(dmax > -kInf)) {  // nothing finite left: invalid row, budget untouched
        c.out_tok[r] = -1;
        if (c.out_lp != nullptr) c.out_lp[r] = std::numeric_limits<float>::quiet_NaN();
        return;
      }
    }
    if (greedy_row(T, dmax)) {
      tok = c.ops.find_first(xd, V, dmax);
    } else {
      tok = draw_row(c, s, r, xd, dmax, ch);
    }
  }

  // ---- budget rule 3 and state update ---------------------------------------------------------
  if (st != nullptr) tok = budget::advance(st, bp, fids, tok);

  c.out_tok[r] = tok;
  if (c.out_lp != nullptr) c.out_lp[r] = logit_at(c, r, tok) - lse;
}


}  // namespace

void sample_rows(const SamplerParams& p) {
  const int64_t B = p.B, V = p.V;
  if (B == 0) return;
  Ctx c;
  static_cast<SamplerParams&>(c) = p;
  c.ops = Ops{tts::cpu::use_avx2()};

  const int64_t nt = tts::cpu::num_threads();
  if (B >= nt || V < 32768 || nt == 1) {
    if (B * V < 32768) {
      for (int64_t r = 0; r < B; ++r) process_row(c, r, false);
    } else {
      par_for(B, [&](int64_t r) { process_row(c, r, false); });
    }
  } else {
    for (int64_t r = 0; r < B; ++r) process_row(c, r, true);
  }
}

}  // namespace tts_sampling
