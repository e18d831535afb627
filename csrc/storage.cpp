#include "storage.h"

#include <algorithm>
#include <cmath>

namespace atlas_fast {

float quantise_int8(const float* in, int8_t* out, int64_t n) {
  float largest = 0.f;
  for (int64_t i = 0; i < n; ++i) largest = std::max(largest, std::fabs(in[i]));
  const float scale = largest / 127.f;
  const float inverse = scale > 0.f ? 1.f / scale : 0.f;
  for (int64_t i = 0; i < n; ++i)
    out[i] = static_cast<int8_t>(std::clamp(std::nearbyint(in[i] * inverse), -127.f, 127.f));
  return scale;
}

namespace {

void quantise_int8_row(const float* in, uint8_t* out, int64_t n) {
  int8_t* values = reinterpret_cast<int8_t*>(out);
  const float scale = quantise_int8(in, values, n);
  for (int64_t i = 0; i < n; ++i) out[i] = static_cast<uint8_t>(values[i] + 128);
  std::fill(out + n, out + int8_scale_offset(n), uint8_t{128});  // padding: zeros once offset
  std::memcpy(out + int8_scale_offset(n), &scale, sizeof scale);
}

void dequantise_int8_row(const uint8_t* in, float* out, int64_t n) {
  float scale;
  std::memcpy(&scale, in + int8_scale_offset(n), sizeof scale);
  for (int64_t i = 0; i < n; ++i) out[i] = scale * static_cast<float>(static_cast<int>(in[i]) - 128);
}

}  // namespace

void convert_from_float(StorageType type, const float* in, void* out, int64_t n) {
  if (type == StorageType::kInt8) return quantise_int8_row(in, static_cast<uint8_t*>(out), n);
  if (type == StorageType::kFloat32) {
    std::memcpy(out, in, static_cast<size_t>(n) * sizeof(float));
    return;
  }
  uint16_t* dst = static_cast<uint16_t*>(out);
  for (int64_t i = 0; i < n; ++i) dst[i] = type == StorageType::kFloat16 ? float_to_fp16(in[i]) : float_to_bf16(in[i]);
}

void convert_to_float(StorageType type, const void* in, float* out, int64_t n) {
  if (type == StorageType::kInt8) return dequantise_int8_row(static_cast<const uint8_t*>(in), out, n);
  if (type == StorageType::kFloat32) {
    std::memcpy(out, in, static_cast<size_t>(n) * sizeof(float));
    return;
  }
  const uint16_t* src = static_cast<const uint16_t*>(in);
  for (int64_t i = 0; i < n; ++i) out[i] = type == StorageType::kFloat16 ? fp16_to_float(src[i]) : bf16_to_float(src[i]);
}

}  // namespace atlas_fast
