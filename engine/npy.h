// NumPy .npy files: how arrays (features, logits, targets) are exchanged with other tools.
// Reads format versions 1.0, 2.0 and 3.0, C order, little-endian f32 / f64 / u8 / i64 / i32;
// writes version 1.0 (2.0 when the header needs it), which every NumPy reads.
//
// Files are untrusted input: the header is parsed as the small Python literal NumPy writes
// (a dict with 'descr', 'fortran_order' and 'shape'), never evaluated; the shape's element
// count is checked for overflow and against the bytes actually present before anything is
// allocated, so a malformed header, a huge shape or a truncated file is a mira::Error naming
// the problem, never a crash or a giant allocation.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "engine/tensor.h"

namespace mira {

enum class NpyType : uint8_t { F32, F64, U8, I64, I32 };

size_t npy_type_size(NpyType t);
const char* npy_type_descr(NpyType t);  // "<f4", "<f8", "|u1", "<i8", "<i4"

struct NpyArray {
  NpyType type = NpyType::F32;
  std::vector<int64_t> shape;  // () for a scalar
  std::vector<uint8_t> data;   // numel * npy_type_size(type) bytes, C order, little-endian

  int64_t numel() const;
  template <typename T>
  const T* as() const {
    return reinterpret_cast<const T*>(data.data());
  }
};

// From a file / from bytes in memory (the whole file's content).
NpyArray npy_read(const std::string& path);
NpyArray npy_parse(const void* bytes, size_t size);

// data: numel(shape) elements of type, C order. Written atomically enough for tools
// (to path + ".tmp", then renamed).
void npy_write(const std::string& path, NpyType type, const std::vector<int64_t>& shape, const void* data);
std::vector<uint8_t> npy_serialize(NpyType type, const std::vector<int64_t>& shape, const void* data);

// Tensors: f32 / f64 / u8 / i64 map to the same dtype, i32 widens to i64; 1 to 4 dimensions
// (a scalar becomes shape (1)). The result lives on the CPU.
Tensor npy_read_tensor(const std::string& path);
Tensor npy_to_tensor(const NpyArray& a);
// f32 / f64 / u8 / i64 tensors on any device (copied to the host); bf16 is written as f32.
void npy_write_tensor(const std::string& path, const Tensor& t);

}  // namespace mira
