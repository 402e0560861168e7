#include "engine/param_store.h"

#include "engine/autograd.h"
#include "engine/ops.h"

namespace mira {

namespace {
int64_t align_up(int64_t n, int64_t elems_per_line) { return (n + elems_per_line - 1) / elems_per_line * elems_per_line; }
}  // namespace

ParamStore::ParamStore(Device device, DType dtype) : device_(device), dtype_(dtype) {
  MIRA_CHECK(dtype_is_float(dtype), "parameters must be floating point");
}

int ParamStore::declare(const std::string& name, const Shape& shape, Kind kind) {
  MIRA_CHECK(!finalized_, "ParamStore: declare('", name, "') after finalize()");
  MIRA_CHECK(!index_.count(name), "ParamStore: '", name, "' declared twice");
  const int64_t line = std::max<int64_t>(1, 64 / static_cast<int64_t>(dtype_size(dtype_)));
  Entry e{name, shape, kind, 0, Tensor()};
  int64_t& cursor = kind == Kind::Param ? param_elems_ : buffer_elems_;
  e.offset = cursor;
  cursor = align_up(cursor + shape.numel(), line);
  entries_.push_back(e);
  index_[name] = static_cast<int>(entries_.size()) - 1;
  return static_cast<int>(entries_.size()) - 1;
}

void ParamStore::finalize() {
  MIRA_CHECK(!finalized_, "ParamStore: finalize() called twice");
  params_ = Tensor::zeros({param_elems_}, dtype_, device_);
  grads_ = Tensor::zeros({param_elems_}, dtype_, device_);
  buffers_ = Tensor::zeros({buffer_elems_}, dtype_, device_);
  const size_t esz = dtype_size(dtype_);
  for (Entry& e : entries_) {
    const Tensor& flat = e.kind == Kind::Param ? params_ : buffers_;
    e.view = Tensor::view_of(flat.storage(), flat.offset_bytes() + static_cast<size_t>(e.offset) * esz, e.shape, dtype_);
    if (e.kind == Kind::Param) {
      e.view.set_requires_grad(true);
      e.view.set_grad(Tensor::view_of(grads_.storage(), grads_.offset_bytes() + static_cast<size_t>(e.offset) * esz,
                                      e.shape, dtype_));
    }
  }
  finalized_ = true;
}

const Tensor& ParamStore::get(int index) const {
  MIRA_CHECK(finalized_, "ParamStore: get() before finalize()");
  MIRA_CHECK(index >= 0 && index < static_cast<int>(entries_.size()), "ParamStore: no entry ", index);
  return entries_[index].view;
}

Tensor ParamStore::get_as(int index, DType dtype) {
  const Tensor& t = get(index);
  if (t.dtype() == dtype) return t;
  if (!grad_enabled() || !t.requires_grad()) return ops::cast(t, dtype);  // nothing recorded to share
  CachedCast& c = casts_[{index, static_cast<int>(dtype)}];
  // A cast recorded on an earlier tape is stale: that tape has run (the values may have changed
  // since) and its node will never pass a gradient on.
  if (!c.t.defined() || c.epoch != tape_epoch()) {
    c.t = ops::cast(t, dtype);
    c.epoch = tape_epoch();
  }
  return c.t;
}

const Tensor& ParamStore::get(const std::string& name) const {
  auto it = index_.find(name);
  MIRA_CHECK(it != index_.end(), "ParamStore: no tensor named '", name, "'");
  return get(it->second);
}

int64_t ParamStore::num_params() const {
  int64_t n = 0;
  for (const Entry& e : entries_)
    if (e.kind == Kind::Param) n += e.shape.numel();
  return n;
}

void ParamStore::zero_grad() {
  MIRA_CHECK(finalized_, "ParamStore: zero_grad() before finalize()");
  grads_.zero_();
}

}  // namespace mira
