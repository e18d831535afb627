// The storage types of index rows (fp32, fp16, bf16, int8) and their conversions to and from fp32.
//
// Scalar conversions are plain C++ (round to nearest even; NaN stays NaN), so that the
// portable scoring path needs no F16C; the SIMD paths widen rows in registers instead.
//
// An int8 row is quantised symmetrically with its own scale: v ~ scale * q, q = round(v / scale) in
// [-127, 127], scale = max|v| / 127. It is stored as dim bytes q + 128 (unsigned: the operand that
// AVX512-VNNI's vpdpbusd takes unsigned), padded to 4 bytes, then the fp32 scale.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace atlas_fast {

enum class StorageType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2, kInt8 = 3 };

// Where an int8 row's scale starts: after its dim bytes, padded to 4.
inline size_t int8_scale_offset(int64_t dim) { return (static_cast<size_t>(dim) + 3) / 4 * 4; }

// Bytes of one stored row of dim values.
inline size_t row_bytes(StorageType type, int64_t dim) {
  switch (type) {
    case StorageType::kFloat32: return 4 * static_cast<size_t>(dim);
    case StorageType::kInt8: return int8_scale_offset(dim) + sizeof(float);
    default: return 2 * static_cast<size_t>(dim);
  }
}

inline float bf16_to_float(uint16_t bits) {
  uint32_t widened = static_cast<uint32_t>(bits) << 16;
  float value;
  std::memcpy(&value, &widened, sizeof value);
  return value;
}

inline uint16_t float_to_bf16(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40u);  // keep NaN a NaN
  bits += 0x7fffu + ((bits >> 16) & 1u);  // round to nearest even
  return static_cast<uint16_t>(bits >> 16);
}

// IEEE half <-> float in plain C++, so that the portable path needs no F16C.
inline float fp16_to_float(uint16_t half) {
  const uint32_t sign = static_cast<uint32_t>(half & 0x8000u) << 16;
  uint32_t exponent = (half >> 10) & 0x1fu;
  uint32_t mantissa = half & 0x3ffu;
  uint32_t bits;
  if (exponent == 0x1f) {
    bits = sign | 0x7f800000u | (mantissa << 13);  // inf or NaN
  } else if (exponent != 0) {
    bits = sign | ((exponent + 112) << 23) | (mantissa << 13);
  } else if (mantissa == 0) {
    bits = sign;
  } else {  // subnormal: normalise
    exponent = 113;
    while ((mantissa & 0x400u) == 0) {
      mantissa <<= 1;
      --exponent;
    }
    bits = sign | (exponent << 23) | ((mantissa & 0x3ffu) << 13);
  }
  float value;
  std::memcpy(&value, &bits, sizeof value);
  return value;
}

inline uint16_t float_to_fp16(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  const uint16_t sign = static_cast<uint16_t>((bits >> 16) & 0x8000u);
  const uint32_t magnitude = bits & 0x7fffffffu;
  if (magnitude > 0x7f800000u) return sign | 0x7e00u;             // NaN
  if (magnitude >= 0x477ff000u) return sign | 0x7c00u;            // rounds to >= 65520: inf
  if (magnitude >= 0x38800000u) {                                 // normal half
    const uint32_t rounded = magnitude + 0xfffu + ((magnitude >> 13) & 1u);
    return sign | static_cast<uint16_t>((rounded - 0x38000000u) >> 13);
  }
  if (magnitude < 0x33000000u) return sign;                       // below half the smallest subnormal
  // Subnormal half: shift the implicit-one mantissa into place, round to nearest even.
  const uint32_t exponent = magnitude >> 23;
  const uint32_t mantissa = (magnitude & 0x7fffffu) | 0x800000u;
  const uint32_t shift = 126 - exponent;  // value = mantissa * 2^(exponent - 150), half unit = 2^-24
  uint32_t half = mantissa >> shift;
  const uint32_t remainder = mantissa & ((1u << shift) - 1);
  const uint32_t halfway = 1u << (shift - 1);
  if (remainder > halfway || (remainder == halfway && (half & 1u))) ++half;
  return sign | static_cast<uint16_t>(half);
}

// The smallest fp32 magnitude, as bits, that the storage type cannot hold: it (and anything above, NaN
// included) converts to inf or NaN. Round to nearest even: fp16 from 65520, bf16 from 0x7f7f8000 (~3.3962e38).
inline uint32_t first_unstorable_bits(StorageType type) {
  switch (type) {
    case StorageType::kFloat16: return 0x477ff000u;
    case StorageType::kBFloat16: return 0x7f7f8000u;
    default: return 0x7f800000u;
  }
}

inline const char* storage_name(StorageType type) {
  switch (type) {
    case StorageType::kFloat16: return "float16";
    case StorageType::kBFloat16: return "bfloat16";
    case StorageType::kInt8: return "int8";
    default: return "float32";
  }
}

// Symmetric int8 quantisation: out[i] = round(in[i] / scale) in [-127, 127] (to nearest even), scale =
// max|in| / 127 (0 for a zero vector); returns scale. Rows and queries are quantised by this one function.
float quantise_int8(const float* in, int8_t* out, int64_t n);

// Converts one row of n fp32 values to the storage type (round to nearest even for fp16/bf16; int8: quantised
// with the row's scale), writing row_bytes(type, n) bytes.
void convert_from_float(StorageType type, const float* in, void* out, int64_t n);
// Converts one stored row of n values back to fp32 (int8: scale * q).
void convert_to_float(StorageType type, const void* in, float* out, int64_t n);

}  // namespace atlas_fast
