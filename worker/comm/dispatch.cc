// Expert-parallel dispatch and combine (dispatch.h): the wire format, the checks that make both
// directions lossless (act_quant'ed e4m3 going out, bf16 coming back) and the ordered fp32 sum.
//
// Dispatch record — one per (token, destination rank owning ≥ 1 of the token's experts), fixed
// size for a given (H, k) so that counts alone locate every record; offsets in bytes:
//   [0, H)              e4m3 codes, one per activation element
//   [H, H + H/128)      int8 scale exponent e of each 1×128 block: x = e4m3(code) · 2^e
//   [I, I + 4k)         int32 expert ids in the sender's slot order, −1 for a slot whose
//                       expert the destination does not own (I = H + H/128 rounded up to 4)
//   [I + 4k, I + 8k)    float routing weights, slot order (all k, as the sender has them)
//   [I + 8k, +4)        int32 token index on the sender
//   [I + 8k + 4]        prefill flag (1: prompt row, kernels::RowPhase::kPrefill)
//   zero padding up to a multiple of 16 bytes
// The records for one destination are contiguous and in token order; the destinations' blocks
// follow each other in rank order. Counts (records per destination) cross first
// (Transport::exchange_counts), then the records (Transport::alltoallv); a rank's records to
// itself take the same path, so nothing special-cases self, but its bytes stay out of stats.
//
// Combine row — one per (token, expert) pair, from the rank that computed it back to the token's
// source: H bf16 values (2H bytes). The rows for one source are the pairs of its records in
// Received::pairs order, i.e. (source token, slot) order, so the source knows from its own
// dispatch where each row lands and no counts need to cross again.
//
// Every input is checked before the first byte is exchanged (parameters, ids, the act_quant form
// of every block; the bf16 form of every combine value), so a bad input throws before any
// collective call. That is only collectively safe if every rank throws: a rank whose input is
// fine goes on into exchange_counts and waits there (for the watchdog's deadline) for the rank
// that threw. The engine feeds all ranks from the same step plan, so bad input there is a bug
// that ends the job either way; the message says which value was wrong.
//
// The e4m3 and bf16 conversions are inline, branch-free loops (the hot part of both phases after
// the copies themselves); on x86-64 the four row loops are also built for AVX2 and AVX-512, picked
// at load time (MOERUN_SIMD_CLONES), as the baseline target has SSE2 only. The e4m3 ones equal
// common/numfmt.h's f32_to_e4m3 / e4m3_to_f32 on every value that can pass the check (asserted once
// for all 256 codes), and every encoded block is decoded again and compared bit for bit with its
// input, so what a receiver reconstructs is exactly what the sender had.
#include "worker/comm/dispatch.h"

#include <algorithm>
#include <bit>
#include <chrono>
#include <cmath>
#include <cstring>
#include <numeric>

#include <omp.h>

#include "common/error.h"
#include "common/numfmt.h"
#include "common/simd_clones.h"

namespace moerun::comm {

namespace {

constexpr int64_t kBlock = 128;          // act_quant block: elements per scale
constexpr int kMinScaleExponent = -127;  // 2^-127: smallest scale stored (E8M0's floor)
constexpr int64_t kRecordAlign = 16;     // dispatch records are padded to this many bytes
constexpr size_t kMinBufferBytes = 64;   // never hand a transport an empty buffer
constexpr uint32_t kF32AbsMask = 0x7FFFFFFFu;
constexpr uint32_t kF32Inf = 0x7F800000u;
constexpr uint32_t kE4m3MinNormalBits = 0x3C800000u;  // 2^-6 in fp32
constexpr uint32_t kE4m3NanMagnitude = 0x7Fu;         // codes 0x7F / 0xFF

int64_t round_up(int64_t v, int64_t to) {
  return (v + to - 1) / to * to;
}

// Byte offsets of one dispatch record (see the file comment).
struct RecordLayout {
  int64_t hidden = 0, k = 0;
  int64_t scales = 0, ids = 0, weights = 0, token = 0, prefill = 0, bytes = 0;
  RecordLayout() = default;
  RecordLayout(int64_t h, int64_t num_k) : hidden(h), k(num_k) {
    scales = h;
    ids = round_up(h + h / kBlock, 4);
    weights = ids + 4 * num_k;
    token = weights + 4 * num_k;
    prefill = token + 4;
    bytes = round_up(prefill + 1, kRecordAlign);
  }
};

// e4m3 code of v, for v that is an exact e4m3 value (|v| ≤ 448): the bit pattern cut down for
// normals, v·2^9 for subnormals, 0x7F with v's sign for NaN. Equals numfmt::f32_to_e4m3 there;
// on other values it gives some code, and the round-trip check rejects the block. Selections are
// masks (not branches) so that the block loops vectorize.
inline uint8_t encode_exact_e4m3(float v) {
  const uint32_t bits = std::bit_cast<uint32_t>(v);
  const uint32_t sign = (bits >> 24) & 0x80u;
  const uint32_t mag = bits & kF32AbsMask;
  const uint32_t normal = (mag >> 20) - (120u << 3);  // rebias 127 → 7, keep 3 mantissa bits
  // Clamped first so that the conversion is defined for every input (NaN, large values).
  const auto small_mag = static_cast<int32_t>(mag) < static_cast<int32_t>(kE4m3MinNormalBits)
                             ? mag
                             : kE4m3MinNormalBits;
  const auto subnormal =
      static_cast<uint32_t>(static_cast<int32_t>(std::bit_cast<float>(small_mag) * 512.0f));
  const uint32_t is_normal = 0u - static_cast<uint32_t>(mag >= kE4m3MinNormalBits);
  const uint32_t is_nan = 0u - static_cast<uint32_t>(mag > kF32Inf);
  uint32_t code = (normal & is_normal) | (subnormal & ~is_normal);
  code = (kE4m3NanMagnitude & is_nan) | (code & ~is_nan);
  return static_cast<uint8_t>((code & 0x7Fu) | sign);
}

// fp32 value of a non-NaN e4m3 code (= numfmt::e4m3_to_f32); NaN codes give a finite value and
// are fixed up by the callers.
inline float decode_e4m3(uint8_t code) {
  const uint32_t mag = code & 0x7Fu;
  const uint32_t sign = static_cast<uint32_t>(code & 0x80u) << 24;
  const uint32_t normal = (mag << 20) + (120u << 23);
  const uint32_t subnormal =
      std::bit_cast<uint32_t>(static_cast<float>(static_cast<int32_t>(mag)) * 0x1p-9f);
  const uint32_t is_normal = 0u - static_cast<uint32_t>(mag >= 8);
  return std::bit_cast<float>(sign | (normal & is_normal) | (subnormal & ~is_normal));
}

// The inline conversions above agree with common/numfmt.h on all 256 codes (an internal
// invariant, checked once per process).
void check_e4m3_conversions() {
  static const bool ok = [] {
    for (int c = 0; c < 256; ++c) {
      const auto code = static_cast<uint8_t>(c);
      const float v = numfmt::e4m3_to_f32(code);
      MOERUN_CHECK(encode_exact_e4m3(v) == numfmt::f32_to_e4m3(v),
                   "dispatch: inline e4m3 encoder disagrees with numfmt on code {:#04x}", c);
      if ((code & 0x7Fu) == kE4m3NanMagnitude) continue;
      MOERUN_CHECK(std::bit_cast<uint32_t>(decode_e4m3(code)) == std::bit_cast<uint32_t>(v),
                   "dispatch: inline e4m3 decoder disagrees with numfmt on code {:#04x}", c);
    }
    return true;
  }();
  (void)ok;
}

// Smallest e ≥ kMinScaleExponent with amax ≤ 448·2^e, from amax's bit pattern (amax finite,
// > 0): amax = 1.m·2^q needs e = q − 8 when 1.m ≤ 1.75 (448 = 1.75·2^8), else q − 7. This is
// ceil(log2(amax/448)) computed exactly. Subnormal amax lands on the floor.
inline int block_scale_exponent(uint32_t amax_bits) {
  if (amax_bits == 0) return 0;
  if (amax_bits < 0x00800000u) return kMinScaleExponent;
  const int q = static_cast<int>(amax_bits >> 23) - 127;
  const int e = q - 8 + ((amax_bits & 0x007FFFFFu) > 0x00600000u ? 1 : 0);
  return std::max(e, kMinScaleExponent);
}

// 2^e as fp32 for e in [−149, 127], built from its bit pattern (subnormal below −126).
inline float pow2f(int e) {
  return std::bit_cast<float>(e >= -126 ? static_cast<uint32_t>(e + 127) << 23 : 1u << (e + 149));
}

[[noreturn]] void throw_not_act_quant(int64_t row, int64_t col, float value, int e) {
  const int64_t block = col / kBlock;
  MOERUN_THROW(
      "dispatch: activation row {} block {} is not act_quant'ed (value {} = {:#010x} at column "
      "{}: not an e4m3 value times the block scale 2^{}, the smallest power of two that fits "
      "the block's max |x| in ±448)",
      row, block, value, std::bit_cast<uint32_t>(value), col, e);
}

// Encodes one row (H floats) into codes [H] and scale exponents [H/128], checking that every
// block is an exact act_quant output. Returns −1, or the column of the first value that is not
// (its block's exponent is then in *bad_exponent).
MOERUN_SIMD_CLONES int64_t encode_row(const float* x, int64_t hidden, uint8_t* codes, int8_t* exps,
                                      int* bad_exponent) {
  for (int64_t b = 0; b < hidden / kBlock; ++b) {
    const float* xb = x + b * kBlock;
    uint8_t* cb = codes + b * kBlock;
    // max |x| over the non-NaN elements, on bit patterns (monotone for non-negative floats).
    int32_t amax_bits = 0;
    for (int64_t i = 0; i < kBlock; ++i) {
      const auto mag = static_cast<int32_t>(std::bit_cast<uint32_t>(xb[i]) & kF32AbsMask);
      amax_bits = std::max(amax_bits, mag > static_cast<int32_t>(kF32Inf) ? 0 : mag);
    }
    const auto amax = static_cast<uint32_t>(amax_bits);
    if (amax == kF32Inf) {
      for (int64_t i = 0; i < kBlock; ++i)
        if (std::isinf(xb[i])) {
          *bad_exponent = 0;
          return b * kBlock + i;
        }
    }
    const int e = block_scale_exponent(amax);
    const float scale = pow2f(e), inv_scale = pow2f(-e);
    uint32_t mismatch = 0;
    for (int64_t i = 0; i < kBlock; ++i) {
      const uint8_t c = encode_exact_e4m3(xb[i] * inv_scale);
      cb[i] = c;
      mismatch |= std::bit_cast<uint32_t>(decode_e4m3(c) * scale) ^ std::bit_cast<uint32_t>(xb[i]);
    }
    if (mismatch != 0) {
      // NaN codes decode only through numfmt; anything else that differs is not act_quant'ed.
      for (int64_t i = 0; i < kBlock; ++i) {
        if (std::bit_cast<uint32_t>(numfmt::e4m3_to_f32(cb[i]) * scale) !=
            std::bit_cast<uint32_t>(xb[i])) {
          *bad_exponent = e;
          return b * kBlock + i;
        }
      }
    }
    exps[b] = static_cast<int8_t>(e);
  }
  return -1;
}

// Inverse of encode_row: x[i] = e4m3(code[i]) · 2^e of its block, bit for bit.
MOERUN_SIMD_CLONES void decode_row(const uint8_t* codes, const int8_t* exps, int64_t hidden,
                                   float* x) {
  for (int64_t b = 0; b < hidden / kBlock; ++b) {
    const uint8_t* cb = codes + b * kBlock;
    float* xb = x + b * kBlock;
    const float scale = pow2f(exps[b]);
    uint32_t nan_codes = 0;
    for (int64_t i = 0; i < kBlock; ++i) {
      xb[i] = decode_e4m3(cb[i]) * scale;
      nan_codes |= (cb[i] & 0x7Fu) == kE4m3NanMagnitude ? 1u : 0u;
    }
    if (nan_codes != 0) {
      for (int64_t i = 0; i < kBlock; ++i)
        if ((cb[i] & 0x7Fu) == kE4m3NanMagnitude) xb[i] = numfmt::e4m3_to_f32(cb[i]) * scale;
    }
  }
}

inline float bf16_value(uint16_t bits) {
  return std::bit_cast<float>(static_cast<uint32_t>(bits) << 16);
}

// out[c] = (+0 + y_0[c]) + y_1[c] + ... over the k bf16 rows `rows` [k] of n values, in the
// order given (each row added to the whole of out before the next, so every element sees the
// same order).
MOERUN_SIMD_CLONES void sum_bf16_rows(const uint16_t* const* rows, int64_t k, int64_t n,
                                      float* out) {
  const uint16_t* y = rows[0];
  for (int64_t c = 0; c < n; ++c) out[c] = 0.0f + bf16_value(y[c]);
  for (int64_t i = 1; i < k; ++i) {
    y = rows[i];
    for (int64_t c = 0; c < n; ++c) out[c] += bf16_value(y[c]);
  }
}

// Buffers are reused across calls and only grow.
void ensure_capacity(Transport& t, std::unique_ptr<Buffer>& buf, size_t bytes) {
  bytes = std::max(bytes, kMinBufferBytes);
  if (buf && buf->bytes() >= bytes) return;
  const size_t grown = buf ? std::max(bytes, buf->bytes() + buf->bytes() / 2) : bytes;
  buf.reset();
  buf = t.alloc(grown);
}

// Below this many elements a pass runs on one thread (a parallel region costs microseconds).
constexpr int64_t kParallelMinElements = int64_t{1} << 16;

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

struct Dispatcher::State {
  // Transport-space buffers (grow only) and, for device transports, host staging of the same
  // size. Dispatch: records out / in; combine: bf16 rows out / in.
  std::unique_ptr<Buffer> dispatch_send, dispatch_recv, combine_send, combine_recv;
  std::vector<uint8_t> stage_send, stage_recv;

  // Per-peer figures of the last dispatch ([ranks] each).
  std::vector<int64_t> records_to, records_from;  // dispatch records
  std::vector<int64_t> pairs_to, pairs_from;      // (token, expert) pairs, = combine rows
  std::vector<int64_t> send_bytes, send_off, recv_bytes, recv_off;  // scratch for alltoallv
  std::vector<int64_t> cursor, row_cursor;  // [ranks] scratch: next record / combine row

  // The last dispatch on the source side.
  bool dispatched = false;
  int64_t tokens = 0, hidden = 0, k = 0;
  std::vector<int32_t> owner;         // [T, k] owning rank of each slot's expert
  std::vector<int64_t> token_rows;    // [T, k] combine rows of t, ascending expert id
  std::vector<int64_t> slot_rows;     // [k] scratch: combine rows of one token by slot
  std::vector<int64_t> first_record;  // [T] the record t's codes are encoded into
  std::vector<int64_t> copy_begin;    // [T + 1] t's other records: copies[copy_begin[t]..)
  std::vector<int64_t> copies;        // record indices that take a copy of t's codes
  std::vector<int64_t> id_stamp;      // [E] scratch: last token that used an id
  std::vector<int64_t> rank_stamp;    // [ranks] scratch: last token sent to a rank

  Received received;
};

Dispatcher::Dispatcher(Transport& transport, ExpertPlacement placement)
    : transport_(transport), placement_(placement), state_(std::make_unique<State>()) {
  MOERUN_CHECK(placement_.ranks >= 1 && placement_.num_experts >= 1,
               "dispatch: placement needs ≥ 1 rank and ≥ 1 expert (ranks {}, experts {})",
               placement_.ranks, placement_.num_experts);
  MOERUN_CHECK(placement_.num_experts % placement_.ranks == 0,
               "dispatch: placement ranks {} must divide the {} experts", placement_.ranks,
               placement_.num_experts);
  MOERUN_CHECK(placement_.ranks == transport_.size(),
               "dispatch: placement spans {} ranks but the transport's group has {}",
               placement_.ranks, transport_.size());
  check_e4m3_conversions();
  const auto n = static_cast<size_t>(placement_.ranks);
  for (auto* v : {&state_->records_to, &state_->records_from, &state_->pairs_to,
                  &state_->pairs_from, &state_->send_bytes, &state_->send_off, &state_->recv_bytes,
                  &state_->recv_off, &state_->cursor, &state_->row_cursor, &state_->rank_stamp})
    v->assign(n, 0);
  state_->id_stamp.assign(static_cast<size_t>(placement_.num_experts), -1);
}

Dispatcher::~Dispatcher() = default;

void Dispatcher::set_threads(int threads) {
  threads_ = threads > 0 ? threads : omp_get_max_threads();
}

int Dispatcher::pass_threads(int64_t elements) const {
  return elements >= kParallelMinElements ? threads_ : 1;
}

int64_t Dispatcher::dispatch_record_bytes(int64_t hidden, int64_t k) {
  return RecordLayout(hidden, k).bytes;
}

const Received& Dispatcher::dispatch(const DispatchParams& p) {
  const auto start = std::chrono::steady_clock::now();
  State& s = *state_;
  s.dispatched = false;
  const int ranks = placement_.ranks, me = transport_.rank();
  const int64_t E = placement_.num_experts;

  // ---- validate everything before the first collective call --------------------------------
  MOERUN_CHECK(p.tokens >= 0, "dispatch: tokens {} must be ≥ 0", p.tokens);
  MOERUN_CHECK(p.hidden > 0 && p.hidden % kBlock == 0,
               "dispatch: hidden {} must be a positive multiple of {}", p.hidden, kBlock);
  MOERUN_CHECK(p.k >= 1 && p.k <= E, "dispatch: k {} must be in 1..{} (the number of experts)", p.k,
               E);
  MOERUN_CHECK(p.prefill_rows >= 0 && p.prefill_rows <= p.tokens,
               "dispatch: prefill_rows {} must be in 0..{} (tokens)", p.prefill_rows, p.tokens);
  if (p.tokens > 0) {
    MOERUN_CHECK(p.x != nullptr, "dispatch: x is null with {} tokens", p.tokens);
    MOERUN_CHECK(p.expert_ids != nullptr, "dispatch: expert_ids is null with {} tokens", p.tokens);
    MOERUN_CHECK(p.weights != nullptr, "dispatch: weights is null with {} tokens", p.tokens);
  }
  const int64_t T = p.tokens, H = p.hidden, K = p.k;
  const RecordLayout layout(H, K);
  const auto rec_bytes = layout.bytes;

  // Owners per slot, records and pairs per destination, each token's slots by ascending id.
  s.owner.resize(static_cast<size_t>(T * K));
  std::fill(s.records_to.begin(), s.records_to.end(), 0);
  std::fill(s.pairs_to.begin(), s.pairs_to.end(), 0);
  std::fill(s.id_stamp.begin(), s.id_stamp.end(), -1);
  std::fill(s.rank_stamp.begin(), s.rank_stamp.end(), -1);
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t j = 0; j < K; ++j) {
      const int32_t id = p.expert_ids[t * K + j];
      MOERUN_CHECK(id >= 0 && id < E, "dispatch: token {} slot {}: expert id {} is not in [0, {})",
                   t, j, id, E);
      MOERUN_CHECK(s.id_stamp[id] != t, "dispatch: token {}: expert id {} appears twice", t, id);
      s.id_stamp[id] = t;
      const int r = placement_.owner(id);
      s.owner[t * K + j] = r;
      ++s.pairs_to[r];
      if (s.rank_stamp[r] != t) {
        s.rank_stamp[r] = t;
        ++s.records_to[r];
      }
    }
  }

  // ---- encode the records (validates the act_quant form) -----------------------------------
  int64_t send_total = 0;
  for (int r = 0; r < ranks; ++r) {
    s.send_off[r] = send_total * rec_bytes;
    s.send_bytes[r] = s.records_to[r] * rec_bytes;
    s.cursor[r] = send_total;  // next record index for r
    send_total += s.records_to[r];
  }
  const bool host = transport_.memory() == MemorySpace::kHost;
  const auto send_size = static_cast<size_t>(send_total * rec_bytes);
  ensure_capacity(transport_, s.dispatch_send, send_size);
  if (!host && s.stage_send.size() < send_size) s.stage_send.resize(send_size);
  uint8_t* out = host ? static_cast<uint8_t*>(s.dispatch_send->data()) : s.stage_send.data();

  // Each destination returns one combine row per pair it got, in (token, slot) order of what
  // was sent to it; its rows land after those of the lower ranks.
  int64_t pairs_total = 0;
  for (int r = 0; r < ranks; ++r) {
    s.row_cursor[r] = pairs_total;
    pairs_total += s.pairs_to[r];
  }
  s.token_rows.resize(static_cast<size_t>(T * K));
  s.slot_rows.resize(static_cast<size_t>(K));
  s.first_record.resize(static_cast<size_t>(T));
  s.copy_begin.resize(static_cast<size_t>(T + 1));
  s.copies.clear();
  std::fill(s.rank_stamp.begin(), s.rank_stamp.end(), -1);
  for (int64_t t = 0; t < T; ++t) {
    const int32_t* ids = p.expert_ids + t * K;
    const int32_t* own = s.owner.data() + t * K;
    const uint8_t prefill = t < p.prefill_rows ? 1 : 0;
    const auto token32 = static_cast<int32_t>(t);
    s.first_record[t] = -1;
    s.copy_begin[t] = static_cast<int64_t>(s.copies.size());
    for (int64_t j = 0; j < K; ++j) {
      const int r = own[j];
      if (s.rank_stamp[r] == t) continue;
      s.rank_stamp[r] = t;
      const int64_t index = s.cursor[r]++;
      uint8_t* rec = out + index * rec_bytes;
      // The codes and scales are encoded once into t's first record (below, in parallel)
      // and copied into the others.
      if (s.first_record[t] < 0) {
        s.first_record[t] = index;
      } else {
        s.copies.push_back(index);
      }
      for (int64_t i = 0; i < K; ++i) {
        const int32_t id = own[i] == r ? ids[i] : -1;
        std::memcpy(rec + layout.ids + 4 * i, &id, 4);
      }
      std::memcpy(rec + layout.weights, p.weights + t * K, static_cast<size_t>(4 * K));
      std::memcpy(rec + layout.token, &token32, 4);
      rec[layout.prefill] = prefill;
      std::memset(rec + layout.prefill + 1, 0, static_cast<size_t>(rec_bytes - layout.prefill - 1));
    }
    // t's combine rows by slot, then listed by ascending expert id (the order of the sum).
    int64_t* rows = s.slot_rows.data();
    for (int64_t j = 0; j < K; ++j) rows[j] = s.row_cursor[own[j]]++;
    int64_t* sorted = s.token_rows.data() + t * K;
    std::iota(sorted, sorted + K, int64_t{0});
    std::sort(sorted, sorted + K, [ids](int64_t a, int64_t b) { return ids[a] < ids[b]; });
    for (int64_t i = 0; i < K; ++i) sorted[i] = rows[sorted[i]];
  }
  s.copy_begin[T] = static_cast<int64_t>(s.copies.size());
  {
    // Rows are independent: any thread count gives the same bytes. The first bad value (by
    // token, then column) is reported.
    int64_t bad_token = T, bad_column = -1;
    int bad_exponent = 0;
    const int threads = pass_threads(T * H);
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t t = 0; t < T; ++t) {
      uint8_t* first = out + s.first_record[t] * rec_bytes;
      int e = 0;
      const int64_t bad =
          encode_row(p.x + t * H, H, first, reinterpret_cast<int8_t*>(first + layout.scales), &e);
      if (bad >= 0) {
#pragma omp critical(moerun_dispatch_bad_value)
        if (t < bad_token) bad_token = t, bad_column = bad, bad_exponent = e;
        continue;
      }
      for (int64_t c = s.copy_begin[t]; c < s.copy_begin[t + 1]; ++c)
        std::memcpy(out + s.copies[c] * rec_bytes, first, static_cast<size_t>(layout.ids));
    }
    if (bad_token < T)
      throw_not_act_quant(bad_token, bad_column, p.x[bad_token * H + bad_column], bad_exponent);
  }

  // ---- exchange ------------------------------------------------------------------------------
  transport_.exchange_counts(s.records_to, s.records_from);
  int64_t recv_total = 0;
  for (int r = 0; r < ranks; ++r) {
    MOERUN_CHECK(s.records_from[r] >= 0, "dispatch: rank {} announced {} records", r,
                 s.records_from[r]);
    s.recv_off[r] = recv_total * rec_bytes;
    s.recv_bytes[r] = s.records_from[r] * rec_bytes;
    recv_total += s.records_from[r];
  }
  const auto recv_size = static_cast<size_t>(recv_total * rec_bytes);
  ensure_capacity(transport_, s.dispatch_recv, recv_size);
  if (!host) {
    transport_.from_host(s.dispatch_send->data(), out, send_size);
  }
  transport_.alltoallv(s.dispatch_send->data(), s.send_bytes, s.send_off, s.dispatch_recv->data(),
                       s.recv_bytes, s.recv_off);
  const uint8_t* in = static_cast<const uint8_t*>(s.dispatch_recv->data());
  if (!host) {
    if (s.stage_recv.size() < recv_size) s.stage_recv.resize(recv_size);
    transport_.to_host(s.stage_recv.data(), in, recv_size);
    in = s.stage_recv.data();
  }

  // ---- decode ----------------------------------------------------------------------------------
  Received& rv = s.received;
  rv.tokens = recv_total;
  rv.x.resize(static_cast<size_t>(recv_total * H));
  rv.prefill.resize(static_cast<size_t>(recv_total));
  rv.source_rank.resize(static_cast<size_t>(recv_total));
  rv.source_token.resize(static_cast<size_t>(recv_total));
  rv.pairs.clear();
  const int64_t own_begin = placement_.begin(me), own_end = placement_.end(me);
  {
    int64_t row = 0;
    for (int src = 0; src < ranks; ++src)
      for (int64_t i = 0; i < s.records_from[src]; ++i) rv.source_rank[row++] = src;
    const int threads = pass_threads(recv_total * H);
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t r = 0; r < recv_total; ++r) {
      const uint8_t* rec = in + r * rec_bytes;
      decode_row(rec, reinterpret_cast<const int8_t*>(rec + layout.scales), H, rv.x.data() + r * H);
      int32_t token = 0;
      std::memcpy(&token, rec + layout.token, 4);
      rv.prefill[r] = rec[layout.prefill];
      rv.source_token[r] = token;
    }
  }
  int64_t row = 0;
  for (int src = 0; src < ranks; ++src) {
    const size_t pairs_before = rv.pairs.size();
    for (int64_t i = 0; i < s.records_from[src]; ++i, ++row) {
      const uint8_t* rec = in + row * rec_bytes;
      for (int64_t j = 0; j < K; ++j) {
        int32_t id = 0;
        float w = 0.0f;
        std::memcpy(&id, rec + layout.ids + 4 * j, 4);
        if (id < 0) continue;
        MOERUN_CHECK(id >= own_begin && id < own_end,
                     "dispatch: rank {} sent expert {} to rank {}, which owns [{}, {})", src, id,
                     me, own_begin, own_end);
        std::memcpy(&w, rec + layout.weights + 4 * j, 4);
        rv.pairs.push_back({row, id, w});
      }
    }
    s.pairs_from[src] = static_cast<int64_t>(rv.pairs.size() - pairs_before);
  }

  // ---- bookkeeping -----------------------------------------------------------------------------
  s.tokens = T;
  s.hidden = H;
  s.k = K;
  s.dispatched = true;
  stats_.calls += 1;
  stats_.tokens += T;
  for (int r = 0; r < ranks; ++r) {
    if (r == me) continue;
    stats_.dispatch_sent += s.records_to[r] * rec_bytes;
    stats_.dispatch_recv += s.records_from[r] * rec_bytes;
    stats_.token_copies_sent += s.records_to[r];
    stats_.pairs_sent += s.pairs_to[r];
  }
  stats_.seconds += seconds_since(start);
  return rv;
}

void Dispatcher::combine(const CombineParams& p) {
  const auto start = std::chrono::steady_clock::now();
  State& s = *state_;
  MOERUN_CHECK(s.dispatched, "combine: no dispatch to pair with (call dispatch first)");
  const int ranks = placement_.ranks, me = transport_.rank();
  const int64_t H = s.hidden, K = s.k, T = s.tokens;
  const Received& rv = s.received;
  const auto P = static_cast<int64_t>(rv.pairs.size());
  const int64_t row_bytes = combine_row_bytes(H);
  MOERUN_CHECK(P == 0 || p.pair_out != nullptr, "combine: pair_out is null with {} pairs", P);
  MOERUN_CHECK(T == 0 || p.out != nullptr, "combine: out is null with {} tokens", T);

  // ---- bf16 rows back to each pair's source (validated before any exchange) -----------------
  const bool host = transport_.memory() == MemorySpace::kHost;
  const auto send_size = static_cast<size_t>(P * row_bytes);
  ensure_capacity(transport_, s.combine_send, send_size);
  if (!host && s.stage_send.size() < send_size) s.stage_send.resize(send_size);
  auto* rows_out = reinterpret_cast<uint16_t*>(host ? static_cast<uint8_t*>(s.combine_send->data())
                                                    : s.stage_send.data());
  int64_t bad_pair = P, bad_column = -1;
  {
    const int threads = pass_threads(P * H);
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t i = 0; i < P; ++i) {
      const int64_t bad = numfmt::f32_to_bf16_exact(p.pair_out + i * H, H, rows_out + i * H);
      if (bad >= 0) {
#pragma omp critical(moerun_combine_bad_value)
        if (i < bad_pair) bad_pair = i, bad_column = bad;
      }
    }
  }
  if (bad_pair < P) {
    const Received::Pair& pr = rv.pairs[bad_pair];
    const float v = p.pair_out[bad_pair * H + bad_column];
    MOERUN_THROW(
        "combine: pair {} (expert {}, source rank {} token {}) output column {} is not a "
        "bf16 value (value {} = {:#010x})",
        bad_pair, pr.expert, rv.source_rank[pr.token], rv.source_token[pr.token], bad_column, v,
        std::bit_cast<uint32_t>(v));
  }
  int64_t send_off = 0, recv_off = 0;
  for (int r = 0; r < ranks; ++r) {
    s.send_bytes[r] = s.pairs_from[r] * row_bytes;
    s.send_off[r] = send_off;
    send_off += s.send_bytes[r];
    s.recv_bytes[r] = s.pairs_to[r] * row_bytes;
    s.recv_off[r] = recv_off;
    recv_off += s.recv_bytes[r];
  }
  const auto recv_size = static_cast<size_t>(recv_off);
  ensure_capacity(transport_, s.combine_recv, recv_size);
  if (!host) transport_.from_host(s.combine_send->data(), rows_out, send_size);
  transport_.alltoallv(s.combine_send->data(), s.send_bytes, s.send_off, s.combine_recv->data(),
                       s.recv_bytes, s.recv_off);
  const uint8_t* in = static_cast<const uint8_t*>(s.combine_recv->data());
  if (!host) {
    if (s.stage_recv.size() < recv_size) s.stage_recv.resize(recv_size);
    transport_.to_host(s.stage_recv.data(), in, recv_size);
    in = s.stage_recv.data();
  }

  // ---- ordered sum: out[t] = ((+0 + y_e1) + y_e2) + ..., e1 < e2 < ... ----------------------
  const auto* rows_in = reinterpret_cast<const uint16_t*>(in);
  {
    const int threads = pass_threads(T * K * H);
#pragma omp parallel num_threads(threads)
    {
      std::vector<const uint16_t*> sum_rows(static_cast<size_t>(K));
#pragma omp for schedule(static)
      for (int64_t t = 0; t < T; ++t) {
        const int64_t* rows = s.token_rows.data() + t * K;
        for (int64_t i = 0; i < K; ++i) sum_rows[i] = rows_in + rows[i] * H;
        sum_bf16_rows(sum_rows.data(), K, H, p.out + t * H);
      }
    }
  }

  for (int r = 0; r < ranks; ++r) {
    if (r == me) continue;
    stats_.combine_sent += s.pairs_from[r] * row_bytes;
    stats_.combine_recv += s.pairs_to[r] * row_bytes;
  }
  stats_.seconds += seconds_since(start);
}

}  // namespace moerun::comm
