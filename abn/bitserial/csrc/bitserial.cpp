// Bit-serial convolution: a b_w x b_a-bit conv as b_w * b_a binary convs of bit-planes.
//
// One call runs one switchable layer at one width over a group of images:
//   1. quantize the float32 NCHW input to unsigned levels, exactly as the float path does
//      (x / step, clamp to [0, high], round half to even), into a zero-padded NHWC byte map;
//   2-3. gather each output position's receptive field straight from the byte map into one
//      bit row per activation plane i (bit i of 64 levels per VPTESTMB: im2col and packing
//      in one step; the zero padding of the conv is level 0 in every plane);
//   4. popcount GEMM: for every (weight plane j, activation plane i), popcount(A_i AND W_j)
//      summed over the row, weighted by 2^(i+j); the planes of one shift i+j share one
//      accumulator, so a b_w x b_a conv pays b_w + b_a - 1 shifts, not b_w * b_a;
//   5. weights are stored offset-encoded, w = alpha * u + beta with u unsigned in b_w planes,
//      so the integer dot product is alpha * sum(a * u) + beta * sum(a);
//   6. the BatchNorm of each sample's (input width, own width) pair and both quantizer steps
//      are one per-channel scale and shift: out = dot * scale[row][oc] + shift[row][oc].
//
// The same source builds two libraries: with -mavx512f -mavx512bw -mavx512dq
// -mavx512vpopcntdq the kernel uses AVX-512 (VPOPCNTQ over 8 output channels at once,
// VPTESTMB for packing 64 levels per instruction); without, portable scalar code with
// __builtin_popcountll. Python picks the build the CPU supports (abn/bitserial/cpu.py).
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
  const uint64_t* weights;  // [weight_bits][out_blocks][row_words][8], offset-encoded planes
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

constexpr int kLanes = 8;  // output channels per block: one 512-bit vector of 64-bit counts
constexpr int kTile = 4;   // positions per GEMM tile: one weight load feeds four positions

struct Geometry {
  int64_t h, w, hp, wp, oh, ow, positions, tiled_positions, map_bytes;
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
  g.tiled_positions = (g.positions + kTile - 1) / kTile * kTile;
  g.map_bytes = (g.hp * g.wp * L.channels + 63) / 64 * 64;
  return g;
}

// 1. x (C, H, W) float -> levels (Hp, Wp, chunk) bytes; the padding stays 0 (level 0 is 0.0).
// Per element: clamp(x / step, 0, high), then round half to even, as torch does.
void quantize(const abn_bitserial_layer& L, const Geometry& g, const float* x, uint8_t* map) {
  const int64_t cb = L.channels, hw = g.h * g.w;
#if ABN_AVX512
  const __m512 step = _mm512_set1_ps(L.act_step);
  const __m512 high = _mm512_set1_ps(static_cast<float>(L.act_high));
  const __m512 zero = _mm512_setzero_ps();
  const __m512i lane = _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6,
                                                           5, 4, 3, 2, 1, 0),
                                          _mm512_set1_epi32(static_cast<int>(hw)));
  for (int64_t y = 0; y < g.h; ++y) {
    for (int64_t i = 0; i < g.w; ++i) {
      uint8_t* dst = map + ((y + L.padding) * g.wp + i + L.padding) * cb;
      for (int64_t c = 0; c < L.in_channels; c += 16) {
        const int64_t left = L.in_channels - c;
        const __mmask16 m = left >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << left) - 1);
        const float* base = x + c * hw + y * g.w + i;
        __m512 v = _mm512_mask_i32gather_ps(zero, m, lane, base, 4);
        v = _mm512_min_ps(_mm512_max_ps(_mm512_div_ps(v, step), zero), high);
        v = _mm512_roundscale_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        _mm_mask_storeu_epi8(dst + c, m, _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(v)));
      }
    }
  }
#else
  const float step = L.act_step;
  const float high = static_cast<float>(L.act_high);
  for (int64_t c = 0; c < L.in_channels; ++c) {
    for (int64_t y = 0; y < g.h; ++y) {
      const float* src = x + c * hw + y * g.w;
      uint8_t* dst = map + ((y + L.padding) * g.wp + L.padding) * cb + c;
      for (int64_t i = 0; i < g.w; ++i) {
        float v = src[i] / step;
        v = v < 0.0f ? 0.0f : (v > high ? high : v);
        dst[i * cb] = static_cast<uint8_t>(std::nearbyint(v));
      }
    }
  }
#endif
}

// 2-3. one bit row per (position, plane): the receptive field, one segment per kernel row.
// A kernel row is kernel * channels contiguous bits of the byte map (kernel positions of
// channels channels, NHWC), stored from a word boundary, so row word k of segment ky is
// bit i of the 64 map bytes starting at 64k of that kernel row. Rows past the last position
// (tile padding) are zero. sums[p] = the sum of the position's activation levels.
void im2col(const abn_bitserial_layer& L, const Geometry& g, const uint8_t* map,
            uint64_t* rows, int64_t* sums) {
  const int64_t kw = L.row_words, field = L.kernel * L.channels;  // map bytes per kernel row
  const int64_t segment = kw / L.kernel;
  std::memset(rows, 0, static_cast<size_t>(g.tiled_positions * L.act_bits * kw) * 8);
  for (int64_t oy = 0; oy < g.oh; ++oy) {
    for (int64_t ox = 0; ox < g.ow; ++ox) {
      const int64_t p = oy * g.ow + ox;
      uint64_t* row = rows + p * L.act_bits * kw;
      int64_t total = 0;
      for (int64_t ky = 0; ky < L.kernel; ++ky) {
        const uint8_t* src = map + ((oy * L.stride + ky) * g.wp + ox * L.stride) * L.channels;
        for (int64_t piece = 0; piece < segment; ++piece) {
          const int64_t left = field - 64 * piece;
          const int64_t k = ky * segment + piece;
#if ABN_AVX512
          const __mmask64 m = left >= 64 ? ~__mmask64{0} : (__mmask64{1} << left) - 1;
          const __m512i v = _mm512_maskz_loadu_epi8(m, src + 64 * piece);
          for (int64_t i = 0; i < L.act_bits; ++i)
            row[i * kw + k] = _mm512_test_epi8_mask(v, _mm512_set1_epi8(static_cast<char>(1 << i)));
          total += _mm512_reduce_add_epi64(_mm512_sad_epu8(v, _mm512_setzero_si512()));
#else
          const int64_t n = left >= 64 ? 64 : left;
          for (int64_t t = 0; t < n; ++t) {
            const uint8_t level = src[64 * piece + t];
            total += level;
            for (int64_t i = 0; i < L.act_bits; ++i)
              row[i * kw + k] |= static_cast<uint64_t>((level >> i) & 1) << t;
          }
#endif
        }
      }
      sums[p] = total;
    }
  }
  for (int64_t p = g.positions; p < g.tiled_positions; ++p) sums[p] = 0;
}

#if ABN_AVX512
// 4-5. sum over (i, j) of 2^(i+j) popcount(A_i AND W_j), for 8 output channels at kTile
// positions; KW > 0 fixes the row length at compile time (the k loop unrolls).
template <int KW>
void tile_dot(const abn_bitserial_layer& L, const uint64_t* rows, const uint64_t* w,
              int64_t block_stride, __m512i* totals) {
  const int64_t kw = KW > 0 ? KW : L.row_words;
  const int64_t per_position = L.act_bits * kw;
  for (int q = 0; q < kTile; ++q) totals[q] = _mm512_setzero_si512();
  for (int64_t s = 0; s < L.act_bits + L.weight_bits - 1; ++s) {
    __m512i acc[kTile];
    for (int q = 0; q < kTile; ++q) acc[q] = _mm512_setzero_si512();
    const int64_t j_lo = s - L.act_bits + 1 > 0 ? s - L.act_bits + 1 : 0;
    const int64_t j_hi = s < L.weight_bits - 1 ? s : L.weight_bits - 1;
    for (int64_t j = j_lo; j <= j_hi; ++j) {
      const uint64_t* wj = w + j * block_stride;
      const uint64_t* a = rows + (s - j) * kw;
      for (int64_t k = 0; k < kw; ++k) {
        const __m512i wk = _mm512_loadu_si512(wj + k * kLanes);
        for (int q = 0; q < kTile; ++q) {
          const __m512i ak = _mm512_set1_epi64(static_cast<long long>(a[q * per_position + k]));
          acc[q] = _mm512_add_epi64(acc[q], _mm512_popcnt_epi64(_mm512_and_si512(wk, ak)));
        }
      }
    }
    const __m128i shift = _mm_cvtsi64_si128(s);
    for (int q = 0; q < kTile; ++q)
      totals[q] = _mm512_add_epi64(totals[q], _mm512_sll_epi64(acc[q], shift));
  }
}

// 4-6. every output channel block at every position of one image, BN applied.
template <int KW>
void gemm_tiles(const abn_bitserial_layer& L, const Geometry& g, const uint64_t* rows,
                const int64_t* sums, int64_t pair, float* tile_out, float* out) {
  const int64_t blocks = (L.out_channels + kLanes - 1) / kLanes;
  const int64_t block_stride = blocks * L.row_words * kLanes;  // one weight plane
  const int64_t per_position = L.act_bits * L.row_words;
  const float* scale = L.scale + pair * L.out_channels;
  const float* shift = L.shift + pair * L.out_channels;
  for (int64_t b = 0; b < blocks; ++b) {
    const uint64_t* w = L.weights + b * L.row_words * kLanes;
    const int64_t lanes = L.out_channels - b * kLanes < kLanes ? L.out_channels - b * kLanes
                                                               : kLanes;
    const __mmask8 m = static_cast<__mmask8>((1u << lanes) - 1);
    const __m256 sc = _mm256_maskz_loadu_ps(m, scale + b * kLanes);
    const __m256 sh = _mm256_maskz_loadu_ps(m, shift + b * kLanes);
    for (int64_t p = 0; p < g.tiled_positions; p += kTile) {
      __m512i totals[kTile];
      tile_dot<KW>(L, rows + p * per_position, w, block_stride, totals);
      for (int q = 0; q < kTile; ++q) {
        __m512i dot = _mm512_mullo_epi64(totals[q], _mm512_set1_epi64(L.alpha));
        dot = _mm512_add_epi64(dot, _mm512_set1_epi64(L.beta * sums[p + q]));
        // multiply, then add (no FMA): the same rounding as the portable kernel's
        const __m256 y = _mm256_add_ps(_mm256_mul_ps(_mm512_cvtepi64_ps(dot), sc), sh);
        _mm256_storeu_ps(tile_out + (p + q) * kLanes, y);
      }
    }
    for (int64_t lane = 0; lane < lanes; ++lane) {
      float* dst = out + (b * kLanes + lane) * g.positions;
      for (int64_t p = 0; p < g.positions; ++p) dst[p] = tile_out[p * kLanes + lane];
    }
  }
}

void gemm(const abn_bitserial_layer& L, const Geometry& g, const uint64_t* rows,
          const int64_t* sums, int64_t pair, float* tile_out, float* out) {
  switch (L.row_words) {
    case 1: gemm_tiles<1>(L, g, rows, sums, pair, tile_out, out); break;
    case 2: gemm_tiles<2>(L, g, rows, sums, pair, tile_out, out); break;
    case 3: gemm_tiles<3>(L, g, rows, sums, pair, tile_out, out); break;
    case 5: gemm_tiles<5>(L, g, rows, sums, pair, tile_out, out); break;
    case 9: gemm_tiles<9>(L, g, rows, sums, pair, tile_out, out); break;
    default: gemm_tiles<0>(L, g, rows, sums, pair, tile_out, out); break;
  }
}
#else
void gemm(const abn_bitserial_layer& L, const Geometry& g, const uint64_t* rows,
          const int64_t* sums, int64_t pair, float* /*tile_out*/, float* out) {
  const int64_t blocks = (L.out_channels + kLanes - 1) / kLanes;
  const int64_t block_stride = blocks * L.row_words * kLanes;
  const float* scale = L.scale + pair * L.out_channels;
  const float* shift = L.shift + pair * L.out_channels;
  for (int64_t oc = 0; oc < L.out_channels; ++oc) {
    const uint64_t* w = L.weights + (oc / kLanes) * L.row_words * kLanes + oc % kLanes;
    for (int64_t p = 0; p < g.positions; ++p) {
      const uint64_t* row = rows + p * L.act_bits * L.row_words;
      int64_t total = 0;
      for (int64_t j = 0; j < L.weight_bits; ++j) {
        for (int64_t i = 0; i < L.act_bits; ++i) {
          int64_t count = 0;
          for (int64_t k = 0; k < L.row_words; ++k)
            count += __builtin_popcountll(w[j * block_stride + k * kLanes] &
                                          row[i * L.row_words + k]);
          total += count << (i + j);
        }
      }
      const int64_t value = L.alpha * total + L.beta * sums[p];
      out[oc * g.positions + p] = static_cast<float>(value) * scale[oc] + shift[oc];
    }
  }
}
#endif

bool valid(const abn_bitserial_layer& L) {
  const bool chunk_ok = L.channels == 8 || L.channels == 16 || L.channels == 32 ||
                        (L.channels > 0 && L.channels % 64 == 0);
  return chunk_ok && L.channels >= L.in_channels && L.act_bits >= 1 && L.act_bits <= 8 &&
         L.weight_bits >= 1 && L.weight_bits <= 16 && L.kernel >= 1 && L.stride >= 1 &&
         L.row_words == L.kernel * ((L.kernel * L.channels + 63) / 64);
}

}  // namespace

extern "C" {

// Runs one layer at one width over n images x (n, in_channels, h, w), float32 NCHW; sample k
// is normalised by BN pair pairs[k]; out is (n, out_channels, oh, ow). Returns 0, or -1 for
// a layer description the kernel cannot run, -2 when memory runs out.
int abn_bitserial_conv(const abn_bitserial_layer* layer, const float* x, int64_t n, int64_t h,
                       int64_t w, const int64_t* pairs, float* out) {
  const abn_bitserial_layer& L = *layer;
  if (!valid(L)) return -1;
  const Geometry g = geometry(L, h, w);
  const size_t sizes[] = {
      static_cast<size_t>(g.map_bytes),
      static_cast<size_t>(g.tiled_positions * L.act_bits * L.row_words) * 8,
      static_cast<size_t>(g.tiled_positions) * 8,
      static_cast<size_t>(g.tiled_positions * kLanes) * 4,
  };
  size_t offsets[5] = {0};
  for (int k = 0; k < 4; ++k) offsets[k + 1] = offsets[k] + (sizes[k] + 63) / 64 * 64;
  uint8_t* scratch = static_cast<uint8_t*>(std::aligned_alloc(64, offsets[4]));
  if (scratch == nullptr) return -2;
  uint8_t* map = scratch;
  uint64_t* rows = reinterpret_cast<uint64_t*>(scratch + offsets[1]);
  int64_t* sums = reinterpret_cast<int64_t*>(scratch + offsets[2]);
  float* tile_out = reinterpret_cast<float*>(scratch + offsets[3]);
  const int64_t in_size = L.in_channels * h * w;
  const int64_t out_size = L.out_channels * g.positions;
  for (int64_t k = 0; k < n; ++k) {
    std::memset(map, 0, sizes[0]);
    quantize(L, g, x + k * in_size, map);
    im2col(L, g, map, rows, sums);
    gemm(L, g, rows, sums, pairs[k], tile_out, out + k * out_size);
  }
  std::free(scratch);
  return 0;
}

}  // extern "C"
