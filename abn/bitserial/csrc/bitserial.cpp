// Bit-serial convolution: a b_w x b_a-bit conv as b_w * b_a binary convs of bit-planes.
//
// One call runs one switchable layer at one width over a group of images:
//   1. quantize the float32 NHWC input (torch's channels-last, the layout the CPU inference
//      path runs in) to unsigned levels, exactly as the float path does (x / step, clamp to
//      [0, high], round half to even), into a zero-padded NHWC byte map;
//   2-3. gather each output position's receptive field straight from the byte map into one
//      bit row per activation plane i (bit i of 64 levels per VPTESTMB: im2col and packing
//      in one step; the zero padding of the conv is level 0 in every plane);
//   4. popcount GEMM: for every (weight plane j, activation plane i), popcount(A_i AND W_j)
//      summed over the row, weighted by 2^(i+j); the planes of one shift i+j share one
//      accumulator, so a b_w x b_a conv pays b_w + b_a - 1 shifts, not b_w * b_a;
//   5. weights are stored offset-encoded, w = alpha * u + beta with u unsigned in b_w planes,
//      so the integer dot product is alpha * sum(a * u) + beta * sum(a);
//   6. the BatchNorm of each sample's (input width, own width) pair and both quantizer steps
//      are one per-channel scale and shift: out = dot * scale[row][oc] + shift[row][oc],
//      written NHWC, so a layer's output is the next one's input without a copy.
//
// The same source builds two libraries: with AVX-512 F/BW/DQ and VPOPCNTDQ the kernel is
// vectorized (one VPOPCNTQ covers one row word of 8 output positions, VPTESTMB packs 64
// levels per instruction, one masked load quantizes 16 channels); without, portable scalar
// code with __builtin_popcountll, for tests and CPUs without AVX-512 (abn/bitserial/cpu.py
// picks; the service serves only the vectorized one).
// A plain C ABI: no Python or torch headers, so it builds with g++ alone in seconds.

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512DQ__) && \
    defined(__AVX512VPOPCNTDQ__)
#define ABN_AVX512 1
#include <immintrin.h>
#else
#define ABN_AVX512 0
#endif

extern "C" {

// One switchable layer at one width, built once at load (abn/bitserial/packing.py).
struct abn_bitserial_layer {
  const uint64_t* weights;  // [weight_bits][out_channels padded to 4][row_words] planes
  const float* scale;       // [pairs][out_channels]: BN scale * activation step * weight step
  const float* shift;       // [pairs][out_channels]: BN shift
  int64_t in_channels;
  int64_t out_channels;
  int64_t kernel;  // square kernel side
  int64_t stride;
  int64_t padding;
  int64_t channels;   // in_channels padded to 8, 16, 32 or a multiple of 64: the bytes of one
                      // position in the level map, the bits of one position in a bit row
  int64_t row_words;  // kernel * ceil(kernel * channels / 64): one segment per kernel row
  int64_t weight_bits;
  int64_t act_bits;
  float act_step;
  int64_t act_high;  // highest activation level, 2^act_bits - 1
  int64_t alpha;     // weight = alpha * u + beta (alpha 1, beta -2^(b-1); at 1 bit 2 and -1)
  int64_t beta;
};

int abn_bitserial_simd(void) { return ABN_AVX512; }

}  // extern "C"

namespace {

// Positions per group: a 512-bit vector holds one 64-bit row word of 8 output positions, so
// one AND + VPOPCNTQ + ADD does 512 binary MACs; a group's outputs go through a
// (positions x channels) tile into the NHWC output, whose rows are positions.
constexpr int kGroup = 8;
constexpr int kChannels = 4;  // output channels per step: one activation load feeds four

struct Geometry {
  int64_t h, w, hp, wp, oh, ow, positions, groups, map_bytes;
};

Geometry geometry(const abn_bitserial_layer& L, int64_t h, int64_t w) {
  Geometry g{};
  g.h = h;
  g.w = w;
  g.hp = h + 2 * L.padding;
  g.wp = w + 2 * L.padding;
  g.oh = (g.hp - L.kernel) / L.stride + 1;
  g.ow = (g.wp - L.kernel) / L.stride + 1;
  g.positions = g.oh * g.ow;
  g.groups = (g.positions + kGroup - 1) / kGroup;
  g.map_bytes = (g.hp * g.wp * L.channels + 63) / 64 * 64;
  return g;
}

// Row word k of activation plane i at position p: rows[((p / 8 * act_bits + i) * row_words
// + k) * 8 + p % 8], so a group's word k of plane i is one vector.
// Words of one weight plane: output channels padded to kChannels (zero weights, never stored).
inline int64_t plane_words(const abn_bitserial_layer& L) {
  return (L.out_channels + kChannels - 1) / kChannels * kChannels * L.row_words;
}

inline int64_t row_index(const abn_bitserial_layer& L, int64_t p, int64_t i, int64_t k) {
  return ((p / kGroup * L.act_bits + i) * L.row_words + k) * kGroup + p % kGroup;
}

// 1. x (H, W, C) float -> levels (Hp, Wp, channels) bytes; the border and the padded
// channels are never written (0: level 0 is 0.0). Per element: clamp(x / step, 0, high),
// then round half to even, as torch does.
void quantize(const abn_bitserial_layer& L, const Geometry& g, const float* x, uint8_t* map) {
  const int64_t cb = L.channels, cin = L.in_channels;
#if ABN_AVX512
  const __m512 step = _mm512_set1_ps(L.act_step);
  const __m512 high = _mm512_set1_ps(static_cast<float>(L.act_high));
  const __m512 zero = _mm512_setzero_ps();
  for (int64_t y = 0; y < g.h; ++y) {
    for (int64_t i = 0; i < g.w; ++i) {
      uint8_t* dst = map + ((y + L.padding) * g.wp + i + L.padding) * cb;
      const float* src = x + (y * g.w + i) * cin;
      for (int64_t c = 0; c < cin; c += 16) {
        const int64_t left = cin - c;
        const __mmask16 m = left >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << left) - 1);
        __m512 v = _mm512_maskz_loadu_ps(m, src + c);
        v = _mm512_min_ps(_mm512_max_ps(_mm512_div_ps(v, step), zero), high);
        v = _mm512_roundscale_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        _mm_mask_storeu_epi8(dst + c, m, _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(v)));
      }
    }
  }
#else
  const float step = L.act_step;
  const float high = static_cast<float>(L.act_high);
  for (int64_t y = 0; y < g.h; ++y) {
    for (int64_t i = 0; i < g.w; ++i) {
      const float* src = x + (y * g.w + i) * cin;
      uint8_t* dst = map + ((y + L.padding) * g.wp + i + L.padding) * cb;
      for (int64_t c = 0; c < cin; ++c) {
        float v = src[c] / step;
        v = v < 0.0f ? 0.0f : (v > high ? high : v);
        dst[c] = static_cast<uint8_t>(std::nearbyint(v));
      }
    }
  }
#endif
}

// 2-3. one bit row per (position, plane): the receptive field, one segment per kernel row.
// A kernel row is kernel * channels contiguous bytes of the level map (NHWC), so row word k
// of segment ky is bit i of 64 map bytes of that kernel row: one VPTESTMB per plane. The last
// group's positions past the end are zero rows.
void im2col(const abn_bitserial_layer& L, const Geometry& g, const uint8_t* map,
            uint64_t* rows) {
  const int64_t kw = L.row_words, field = L.kernel * L.channels;  // map bytes per kernel row
  const int64_t segment = kw / L.kernel, plane_stride = kw * kGroup;
  for (int64_t p = g.positions; p < g.groups * kGroup; ++p)
    for (int64_t i = 0; i < L.act_bits; ++i)
      for (int64_t k = 0; k < kw; ++k) rows[row_index(L, p, i, k)] = 0;
#if ABN_AVX512
  __m512i bit[8];
  for (int64_t i = 0; i < L.act_bits; ++i) bit[i] = _mm512_set1_epi8(static_cast<char>(1 << i));
#endif
  for (int64_t oy = 0; oy < g.oh; ++oy) {
    for (int64_t ox = 0; ox < g.ow; ++ox) {
      const int64_t p = oy * g.ow + ox;
      uint64_t* base = rows + row_index(L, p, 0, 0);  // word k, plane i: + i * stride + k * 8
      const uint8_t* corner = map + (oy * L.stride * g.wp + ox * L.stride) * L.channels;
      for (int64_t ky = 0; ky < L.kernel; ++ky) {
        const uint8_t* src = corner + ky * g.wp * L.channels;
        for (int64_t piece = 0; piece < segment; ++piece) {
          const int64_t left = field - 64 * piece;
          uint64_t* dst = base + (ky * segment + piece) * kGroup;
#if ABN_AVX512
          const __mmask64 m = left >= 64 ? ~__mmask64{0} : (__mmask64{1} << left) - 1;
          const __m512i v = _mm512_maskz_loadu_epi8(m, src + 64 * piece);
          for (int64_t i = 0; i < L.act_bits; ++i)
            dst[i * plane_stride] = _mm512_test_epi8_mask(v, bit[i]);
#else
          const int64_t n = left >= 64 ? 64 : left;
          for (int64_t i = 0; i < L.act_bits; ++i) {
            uint64_t word = 0;
            for (int64_t t = 0; t < n; ++t)
              word |= static_cast<uint64_t>((src[64 * piece + t] >> i) & 1) << t;
            dst[i * plane_stride] = word;
          }
#endif
        }
      }
    }
  }
}

#if ABN_AVX512
// sum(a) of a group's 8 positions: sum over planes i of 2^i popcount(row words of plane i).
inline __m512i group_sums(const abn_bitserial_layer& L, const uint64_t* group) {
  __m512i total = _mm512_setzero_si512();
  for (int64_t i = 0; i < L.act_bits; ++i) {
    __m512i count = _mm512_setzero_si512();
    for (int64_t k = 0; k < L.row_words; ++k)
      count = _mm512_add_epi64(
          count, _mm512_popcnt_epi64(_mm512_loadu_si512(group + (i * L.row_words + k) * kGroup)));
    total = _mm512_add_epi64(total, _mm512_sll_epi64(count, _mm_cvtsi64_si128(i)));
  }
  return total;
}

// 4-5. sum over (i, j) of 2^(i+j) popcount(A_i AND W_j) for one group and kChannels output
// channels from oc; KW > 0 fixes the row length at compile time (the k loop unrolls).
template <int KW>
void group_dot(const abn_bitserial_layer& L, const uint64_t* group, int64_t oc,
               __m512i* totals) {
  const int64_t kw = KW > 0 ? KW : L.row_words;
  const int64_t plane = plane_words(L);
  for (int o = 0; o < kChannels; ++o) totals[o] = _mm512_setzero_si512();
  for (int64_t s = 0; s < L.act_bits + L.weight_bits - 1; ++s) {
    __m512i acc[kChannels];
    for (int o = 0; o < kChannels; ++o) acc[o] = _mm512_setzero_si512();
    const int64_t j_lo = s - L.act_bits + 1 > 0 ? s - L.act_bits + 1 : 0;
    const int64_t j_hi = s < L.weight_bits - 1 ? s : L.weight_bits - 1;
    for (int64_t j = j_lo; j <= j_hi; ++j) {
      const uint64_t* a = group + (s - j) * kw * kGroup;
      const uint64_t* w = L.weights + j * plane + oc * kw;
      for (int64_t k = 0; k < kw; ++k) {
        const __m512i ak = _mm512_loadu_si512(a + k * kGroup);
        for (int o = 0; o < kChannels; ++o) {
          const __m512i wk = _mm512_set1_epi64(static_cast<long long>(w[o * kw + k]));
          acc[o] = _mm512_add_epi64(acc[o], _mm512_popcnt_epi64(_mm512_and_si512(ak, wk)));
        }
      }
    }
    const __m128i shift = _mm_cvtsi64_si128(s);
    for (int o = 0; o < kChannels; ++o)
      totals[o] = _mm512_add_epi64(totals[o], _mm512_sll_epi64(acc[o], shift));
  }
}

// Four channels' outputs at a group's 8 positions (y[o] holds channel o at positions 0..7)
// into the NHWC rows of its first n positions: a 4 x 8 transpose in registers, then one
// 4-float store per position, where a scatter per channel costs more.
inline void store_positions(const __m256* y, int64_t n, int64_t row, float* out) {
  const __m256 t0 = _mm256_unpacklo_ps(y[0], y[1]);  // c0p0 c1p0 c0p1 c1p1 | p4, p5
  const __m256 t1 = _mm256_unpackhi_ps(y[0], y[1]);  // p2, p3 | p6, p7
  const __m256 t2 = _mm256_unpacklo_ps(y[2], y[3]);
  const __m256 t3 = _mm256_unpackhi_ps(y[2], y[3]);
  const __m256 u[4] = {
      _mm256_shuffle_ps(t0, t2, 0x44),  // p0 | p4, channels 0-3 each
      _mm256_shuffle_ps(t0, t2, 0xEE),  // p1 | p5
      _mm256_shuffle_ps(t1, t3, 0x44),  // p2 | p6
      _mm256_shuffle_ps(t1, t3, 0xEE),  // p3 | p7
  };
  for (int64_t i = 0; i < n; ++i) {
    const __m128 v = i < 4 ? _mm256_castps256_ps128(u[i]) : _mm256_extractf128_ps(u[i - 4], 1);
    _mm_storeu_ps(out + i * row, v);
  }
}

// 4-6. every group at every output channel of one image, BN applied, stored NHWC: each
// group's (channel x position) results go into its positions' rows.
template <int KW>
void gemm_groups(const abn_bitserial_layer& L, const Geometry& g, const uint64_t* rows,
                 int64_t pair, float* out) {
  const float* scale = L.scale + pair * L.out_channels;
  const float* shift = L.shift + pair * L.out_channels;
  const int64_t per_group = L.act_bits * L.row_words * kGroup, oc_all = L.out_channels;
  const __m256i row_starts = _mm256_mullo_epi32(_mm256_set_epi32(7, 6, 5, 4, 3, 2, 1, 0),
                                                _mm256_set1_epi32(static_cast<int>(oc_all)));
  for (int64_t q = 0; q < g.groups; ++q) {
    const uint64_t* group = rows + q * per_group;
    const int64_t p = q * kGroup, n = g.positions - p < kGroup ? g.positions - p : kGroup;
    const __mmask8 m = static_cast<__mmask8>((1u << n) - 1);
    float* group_out = out + p * oc_all;
    const __m512i sums = _mm512_mullo_epi64(group_sums(L, group), _mm512_set1_epi64(L.beta));
    for (int64_t oc = 0; oc < L.out_channels; oc += kChannels) {
      __m512i totals[kChannels];
      group_dot<KW>(L, group, oc, totals);
      const int64_t count = L.out_channels - oc < kChannels ? L.out_channels - oc : kChannels;
      __m256 y[kChannels];
      for (int64_t o = 0; o < count; ++o) {
        __m512i dot = L.alpha == 2 ? _mm512_slli_epi64(totals[o], 1) : totals[o];  // 1 or 2
        dot = _mm512_add_epi64(dot, sums);
        // multiply, then add (no FMA): the same rounding as the portable kernel's
        y[o] = _mm256_add_ps(
            _mm256_mul_ps(_mm512_cvtepi64_ps(dot), _mm256_set1_ps(scale[oc + o])),
            _mm256_set1_ps(shift[oc + o]));
      }
      if (count == kChannels) {
        store_positions(y, n, oc_all, group_out + oc);
      } else {
        for (int64_t o = 0; o < count; ++o)
          _mm256_mask_i32scatter_ps(group_out + oc + o, m, row_starts, y[o], 4);
      }
    }
  }
}

void gemm(const abn_bitserial_layer& L, const Geometry& g, const uint64_t* rows, int64_t pair,
          float* out) {
  switch (L.row_words) {
    case 1: gemm_groups<1>(L, g, rows, pair, out); break;
    case 2: gemm_groups<2>(L, g, rows, pair, out); break;
    case 3: gemm_groups<3>(L, g, rows, pair, out); break;
    case 6: gemm_groups<6>(L, g, rows, pair, out); break;
    case 9: gemm_groups<9>(L, g, rows, pair, out); break;
    default: gemm_groups<0>(L, g, rows, pair, out); break;
  }
}
#else
void gemm(const abn_bitserial_layer& L, const Geometry& g, const uint64_t* rows, int64_t pair,
          float* out) {
  const int64_t kw = L.row_words, plane = plane_words(L);
  const float* scale = L.scale + pair * L.out_channels;
  const float* shift = L.shift + pair * L.out_channels;
  for (int64_t p = 0; p < g.positions; ++p) {
    int64_t sum = 0;
    for (int64_t i = 0; i < L.act_bits; ++i)
      for (int64_t k = 0; k < kw; ++k)
        sum += static_cast<int64_t>(__builtin_popcountll(rows[row_index(L, p, i, k)])) << i;
    for (int64_t oc = 0; oc < L.out_channels; ++oc) {
      int64_t total = 0;
      for (int64_t j = 0; j < L.weight_bits; ++j) {
        for (int64_t i = 0; i < L.act_bits; ++i) {
          int64_t count = 0;
          for (int64_t k = 0; k < kw; ++k)
            count += __builtin_popcountll(L.weights[j * plane + oc * kw + k] &
                                          rows[row_index(L, p, i, k)]);
          total += count << (i + j);
        }
      }
      const int64_t value = L.alpha * total + L.beta * sum;
      out[p * L.out_channels + oc] = static_cast<float>(value) * scale[oc] + shift[oc];
    }
  }
}
#endif

bool valid(const abn_bitserial_layer& L) {
  const bool chunk_ok = L.channels == 8 || L.channels == 16 || L.channels == 32 ||
                        (L.channels > 0 && L.channels % 64 == 0);
  return chunk_ok && L.channels >= L.in_channels && L.act_bits >= 1 && L.act_bits <= 8 &&
         L.weight_bits >= 1 && L.weight_bits <= 16 && L.kernel >= 1 && L.stride >= 1 &&
         (L.alpha == 1 || L.alpha == 2) &&
         L.row_words == L.kernel * ((L.kernel * L.channels + 63) / 64);
}

}  // namespace

extern "C" {

// Runs one layer at one width over n images x (n, h, w, in_channels), float32 NHWC; sample k
// is normalised by BN pair pairs[k]; out is (n, oh, ow, out_channels). Returns 0, or -1 for
// a layer description the kernel cannot run, -2 when memory runs out.
int abn_bitserial_conv(const abn_bitserial_layer* layer, const float* x, int64_t n, int64_t h,
                       int64_t w, const int64_t* pairs, float* out) {
  const abn_bitserial_layer& L = *layer;
  if (!valid(L)) return -1;
  const Geometry g = geometry(L, h, w);
  const size_t map_bytes = static_cast<size_t>(g.map_bytes);
  const size_t row_bytes = static_cast<size_t>(g.groups * kGroup * L.act_bits * L.row_words) * 8;
  uint8_t* scratch = static_cast<uint8_t*>(std::aligned_alloc(64, map_bytes + row_bytes));
  if (scratch == nullptr) return -2;
  uint8_t* map = scratch;
  uint64_t* rows = reinterpret_cast<uint64_t*>(scratch + map_bytes);
  const int64_t in_size = L.in_channels * h * w;
  const int64_t out_size = L.out_channels * g.positions;
  // the border and the padded channels stay 0 for every image: each overwrites the rest
  std::memset(map, 0, map_bytes);
  for (int64_t k = 0; k < n; ++k) {
    quantize(L, g, x + k * in_size, map);
    im2col(L, g, map, rows);
    gemm(L, g, rows, pairs[k], out + k * out_size);
  }
  std::free(scratch);
  return 0;
}

}  // extern "C"
