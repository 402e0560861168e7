// The closed-form weights and inputs of tools/golden_models.py (formula_value), computed the
// same way here, so golden fixtures store outputs only.
#pragma once

#include <cmath>
#include <string>
#include <vector>

#include "engine/param_store.h"
#include "models/checkpoint.h"

namespace mira::testing {

inline uint32_t fnv1a32(const std::string& s) {
  uint32_t h = 0x811C9DC5u;
  for (unsigned char c : s) {
    h ^= c;
    h *= 0x01000193u;
  }
  return h;
}

// Mirrors formula_value() in tools/golden_models.py; `shape` in PyTorch's layout.
inline std::vector<double> formula(const std::string& name, const Shape& shape) {
  std::vector<double> s(static_cast<size_t>(shape.numel()));
  const uint64_t base = static_cast<uint64_t>(fnv1a32(name)) << 32;
  for (size_t i = 0; i < s.size(); ++i) {
    uint64_t z = base + i + 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    const double u = static_cast<double>(z >> 11) / 9007199254740992.0;
    s[i] = std::sqrt(3.0) * (2.0 * u - 1.0);
  }
  const std::string leaf = name.substr(name.rfind('.') + 1);
  double scale = 1.0, offset = 0.0;
  if (leaf == "running_var") {
    for (double& v : s) v = 1.0 + 0.5 * v * v;
    return s;
  }
  if (leaf == "weight_g") return std::vector<double>(s.size(), 1.0);
  if (leaf == "running_mean" || leaf == "bias") scale = 0.1;
  if (leaf == "weight" && shape.ndim() == 1) {
    scale = 0.2;
    offset = 1.0;
  }
  if (leaf == "weight" && shape.ndim() == 4) scale = std::sqrt(2.0 / double(shape[0] * shape[2] * shape[3]));
  if (leaf == "weight" && shape.ndim() == 2) scale = 1.0 / std::sqrt(double(shape[1]));
  for (double& v : s) v = offset + scale * v;
  return s;
}

// Float32 rounding as numpy's astype(float32) does, then into the store (OIHW -> OHWI).
inline void formula_init(ParamStore& ps) {
  for (const ParamStore::Entry& e : ps.entries()) {
    Shape file_shape = e.shape.ndim() == 4 ? Shape{e.shape[0], e.shape[3], e.shape[1], e.shape[2]} : e.shape;
    Tensor t = Tensor::from_vector(formula(e.name, file_shape), file_shape, DType::F32);
    e.view.copy_(e.shape.ndim() == 4 ? models::oihw_to_ohwi(t) : t);
  }
}

inline Tensor formula_input(const std::string& name, int n, int hw, DType dtype = DType::F32) {
  Tensor nchw = Tensor::from_vector(formula(name, {n, 3, hw, hw}), {n, 3, hw, hw}, DType::F32);
  // NCHW -> NHWC: the same permutation as OIHW -> OHWI.
  return models::oihw_to_ohwi(nchw).to(dtype);
}

}  // namespace mira::testing
