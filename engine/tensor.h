// Tensor: a refcounted storage plus an offset, a shape of up to 4 dimensions, a dtype and a
// device. Always contiguous (row-major); image activations are NHWC. Views (reshape, batch
// slices) share storage and are detached from autograd; the autograd-aware versions are ops
// (ops::reshape). A tensor that takes part in autograd carries an AutogradMeta shared by all
// copies of the handle, so a parameter and every copy of it see one gradient.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "engine/dtype.h"
#include "engine/error.h"

namespace mira {

class Shape {
 public:
  static constexpr int kMaxDims = 4;
  Shape() = default;
  Shape(std::initializer_list<int64_t> dims);
  explicit Shape(const std::vector<int64_t>& dims);
  int ndim() const { return nd_; }
  int64_t operator[](int i) const { return d_[i]; }
  int64_t& operator[](int i) { return d_[i]; }
  int64_t numel() const;
  bool operator==(const Shape& o) const;
  bool operator!=(const Shape& o) const { return !(*this == o); }
  std::vector<int64_t> vec() const { return std::vector<int64_t>(d_, d_ + nd_); }
  std::string str() const;

 private:
  int64_t d_[kMaxDims] = {0, 0, 0, 0};
  int nd_ = 0;
};

struct Storage {
  void* data = nullptr;
  size_t bytes = 0;
  Device device;
  bool pinned = false;  // page-locked host memory (for asynchronous copies)
  Storage() = default;
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
  ~Storage();
};

// Aligned host memory, cached device memory or pinned host memory (engine/memory.cpp).
std::shared_ptr<Storage> allocate_storage(size_t bytes, Device device);
std::shared_ptr<Storage> allocate_pinned(size_t bytes);

struct AutogradMeta;

class Tensor {
 public:
  Tensor() = default;

  static Tensor empty(const Shape& shape, DType dtype = DType::F32, Device device = Device::cpu());
  static Tensor zeros(const Shape& shape, DType dtype = DType::F32, Device device = Device::cpu());
  static Tensor full(const Shape& shape, double value, DType dtype = DType::F32,
                     Device device = Device::cpu());
  // Seeded, counter-based (Philox): the same (seed, shape) gives the same values on any machine.
  static Tensor randn(const Shape& shape, uint64_t seed, double mean = 0.0, double stddev = 1.0,
                      DType dtype = DType::F32, Device device = Device::cpu());
  static Tensor uniform(const Shape& shape, uint64_t seed, double lo, double hi,
                        DType dtype = DType::F32, Device device = Device::cpu());
  // Host values converted to dtype, then moved to device.
  static Tensor from_vector(const std::vector<double>& values, const Shape& shape,
                            DType dtype = DType::F32, Device device = Device::cpu());
  // Wraps existing storage (views, parameter stores).
  static Tensor view_of(std::shared_ptr<Storage> storage, size_t offset_bytes, const Shape& shape,
                        DType dtype);

  bool defined() const { return storage_ != nullptr; }
  const Shape& shape() const { return shape_; }
  int ndim() const { return shape_.ndim(); }
  int64_t dim(int i) const { return shape_[i < 0 ? i + shape_.ndim() : i]; }
  int64_t numel() const { return shape_.numel(); }
  DType dtype() const { return dtype_; }
  Device device() const { return storage_ ? storage_->device : Device::cpu(); }
  bool is_cuda() const { return device().is_cuda(); }
  size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype_); }
  const std::shared_ptr<Storage>& storage() const { return storage_; }
  size_t offset_bytes() const { return offset_; }

  void* raw() const;
  template <typename T>
  T* data() const {
    check_type(sizeof(T));
    return static_cast<T*>(raw());
  }

  // Views sharing storage (detached from autograd).
  Tensor reshape(const Shape& shape) const;
  Tensor slice_batch(int64_t begin, int64_t end) const;

  Tensor to(Device device) const;
  Tensor to(DType dtype) const;
  Tensor to(Device device, DType dtype) const;
  Tensor clone() const;
  Tensor detach() const;  // same storage, no autograd

  void fill_(double value) const;  // const: changes the data, not the handle
  void zero_() const;
  void copy_(const Tensor& src) const;  // same shape; converts dtype and device

  // Host copy as doubles (tests, logging); scalars.
  std::vector<double> to_vector() const;
  double item() const;

  std::string str() const;  // "f32[2, 3] cpu"

  // Autograd.
  bool requires_grad() const;
  Tensor& set_requires_grad(bool on = true);
  Tensor grad() const;
  void set_grad(const Tensor& g);
  // Keep this non-leaf tensor's gradient after backward (by default intermediate gradients are
  // freed as soon as their node has run).
  void retain_grad();
  const std::shared_ptr<AutogradMeta>& meta() const { return meta_; }
  std::shared_ptr<AutogradMeta>& meta() { return meta_; }

 private:
  void check_type(size_t elem_size) const;
  std::shared_ptr<Storage> storage_;
  size_t offset_ = 0;
  Shape shape_;
  DType dtype_ = DType::F32;
  std::shared_ptr<AutogradMeta> meta_;
};

struct AutogradMeta {
  bool requires_grad = false;
  bool is_leaf = true;
  bool retain_grad = false;
  Tensor grad;
};

}  // namespace mira
