#include "storage.h"

namespace atlas_fast {

void convert_from_float(StorageType type, const float* in, void* out, int64_t n) {
  if (type == StorageType::kFloat32) {
    std::memcpy(out, in, static_cast<size_t>(n) * sizeof(float));
    return;
  }
  uint16_t* dst = static_cast<uint16_t*>(out);
  for (int64_t i = 0; i < n; ++i) dst[i] = type == StorageType::kFloat16 ? float_to_fp16(in[i]) : float_to_bf16(in[i]);
}

void convert_to_float(StorageType type, const void* in, float* out, int64_t n) {
  if (type == StorageType::kFloat32) {
    std::memcpy(out, in, static_cast<size_t>(n) * sizeof(float));
    return;
  }
  const uint16_t* src = static_cast<const uint16_t*>(in);
  for (int64_t i = 0; i < n; ++i) out[i] = type == StorageType::kFloat16 ? fp16_to_float(src[i]) : bf16_to_float(src[i]);
}

}  // namespace atlas_fast
