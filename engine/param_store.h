// ParamStore: every parameter of a model in one flat buffer, every gradient in another, and
// the non-trained state (BN running statistics) in a third, each with named views. Then the
// EMA update, LARS/SGD, gradient zeroing and the gradient all-reduce are each one pass over
// one buffer. Usage: declare all tensors, finalize() (allocates), then take views by name.
// Each view starts at a 64-byte boundary; the padding between views stays zero.
#pragma once

#include <map>
#include <string>
#include <unordered_map>
#include <vector>

#include "engine/tensor.h"

namespace mira {

class ParamStore {
 public:
  enum class Kind { Param, Buffer };
  struct Entry {
    std::string name;
    Shape shape;
    Kind kind;
    int64_t offset = 0;  // elements into its flat buffer
    Tensor view;         // valid after finalize()
  };

  explicit ParamStore(Device device = Device::cpu(), DType dtype = DType::F32);

  // Declares a tensor; names are unique. Returns its index.
  int declare(const std::string& name, const Shape& shape, Kind kind = Kind::Param);
  // Allocates the flat buffers (parameters and buffers zeroed) and creates the views;
  // parameter views require grad, with their gradient a view into the flat gradient buffer.
  void finalize();
  bool finalized() const { return finalized_; }

  const Tensor& get(int index) const;
  const Tensor& get(const std::string& name) const;
  // Tensor `index` in `dtype`, for compute (mixed precision): the view itself when the dtypes
  // agree, else ops::cast of it. With autograd recording, the cast is made once per tape and
  // shared by every later use on that tape (as autocast's weight cache): one conversion and one
  // gradient accumulation per parameter and step, however many crops the step runs. The cache
  // belongs to the thread that records the tape (tape_epoch() is per thread): one store, one
  // training thread.
  Tensor get_as(int index, DType dtype);
  // Drops the cached casts: whoever changes the parameters outside autograd (the optimiser, a
  // checkpoint load) calls it, so a forward on the same tape cannot see the old values.
  void clear_casts() { casts_.clear(); }
  bool contains(const std::string& name) const { return index_.count(name) != 0; }
  const std::vector<Entry>& entries() const { return entries_; }

  Tensor flat_params() const { return params_; }
  Tensor flat_grads() const { return grads_; }
  Tensor flat_buffers() const { return buffers_; }
  int64_t num_params() const;  // elements of all parameters, padding excluded
  void zero_grad();

  Device device() const { return device_; }
  DType dtype() const { return dtype_; }

 private:
  Device device_;
  DType dtype_;
  bool finalized_ = false;
  std::vector<Entry> entries_;
  std::unordered_map<std::string, int> index_;
  int64_t param_elems_ = 0, buffer_elems_ = 0;
  Tensor params_, grads_, buffers_;
  struct CachedCast {
    Tensor t;
    uint64_t epoch = 0;
  };
  std::map<std::pair<int, int>, CachedCast> casts_;  // (index, dtype) -> cast on the current tape
};

}  // namespace mira
