#include "engine/tensor.h"

#include <algorithm>
#include <cstring>
#include <sstream>

#include "engine/cuda_backend.h"
#include "engine/rng.h"
#include "kernels/cpu/pointwise.h"

namespace mira {

Shape::Shape(std::initializer_list<int64_t> dims) {
  MIRA_CHECK(dims.size() <= kMaxDims, "tensors have at most 4 dimensions, got ", dims.size());
  for (int64_t v : dims) {
    MIRA_CHECK(v >= 0, "negative dimension ", v);
    d_[nd_++] = v;
  }
}

Shape::Shape(const std::vector<int64_t>& dims) {
  MIRA_CHECK(dims.size() <= kMaxDims, "tensors have at most 4 dimensions, got ", dims.size());
  for (int64_t v : dims) {
    MIRA_CHECK(v >= 0, "negative dimension ", v);
    d_[nd_++] = v;
  }
}

int64_t Shape::numel() const {
  int64_t n = 1;
  for (int i = 0; i < nd_; ++i) n *= d_[i];
  return n;
}

bool Shape::operator==(const Shape& o) const {
  if (nd_ != o.nd_) return false;
  for (int i = 0; i < nd_; ++i)
    if (d_[i] != o.d_[i]) return false;
  return true;
}

std::string Shape::str() const {
  std::ostringstream os;
  os << "[";
  for (int i = 0; i < nd_; ++i) os << (i ? ", " : "") << d_[i];
  os << "]";
  return os.str();
}

namespace {
void check_dtype_device(DType t, Device d) {
  if (d.is_cpu()) MIRA_CHECK(t != DType::BF16, "bf16 tensors live on CUDA only");
  if (d.is_cuda()) MIRA_CHECK(t != DType::F64, "f64 tensors live on the CPU only");
}
}  // namespace

Tensor Tensor::empty(const Shape& shape, DType dtype, Device device) {
  check_dtype_device(dtype, device);
  Tensor t;
  t.shape_ = shape;
  t.dtype_ = dtype;
  t.storage_ = allocate_storage(static_cast<size_t>(shape.numel()) * dtype_size(dtype), device);
  return t;
}

Tensor Tensor::zeros(const Shape& shape, DType dtype, Device device) {
  Tensor t = empty(shape, dtype, device);
  t.zero_();
  return t;
}

Tensor Tensor::full(const Shape& shape, double value, DType dtype, Device device) {
  Tensor t = empty(shape, dtype, device);
  t.fill_(value);
  return t;
}

Tensor Tensor::from_vector(const std::vector<double>& values, const Shape& shape, DType dtype, Device device) {
  MIRA_CHECK(static_cast<int64_t>(values.size()) == shape.numel(), "from_vector: ", values.size(),
             " values for shape ", shape.str());
  const DType host_t = dtype == DType::BF16 ? DType::F32 : dtype;
  Tensor h = empty(shape, host_t, Device::cpu());
  cpu::cast(values.data(), static_cast<int>(DType::F64), h.raw(), static_cast<int>(host_t), shape.numel());
  return h.to(device, dtype);
}

Tensor Tensor::randn(const Shape& shape, uint64_t seed, double mean, double stddev, DType dtype, Device device) {
  std::vector<double> v(static_cast<size_t>(shape.numel()));
  for (size_t i = 0; i < v.size(); ++i) v[i] = mean + stddev * philox_normal(seed, i);
  return from_vector(v, shape, dtype, device);
}

Tensor Tensor::uniform(const Shape& shape, uint64_t seed, double lo, double hi, DType dtype, Device device) {
  std::vector<double> v(static_cast<size_t>(shape.numel()));
  for (size_t i = 0; i < v.size(); ++i) v[i] = lo + (hi - lo) * philox_uniform(seed, i);
  return from_vector(v, shape, dtype, device);
}

Tensor Tensor::view_of(std::shared_ptr<Storage> storage, size_t offset_bytes, const Shape& shape, DType dtype) {
  MIRA_CHECK(storage != nullptr, "view of a null storage");
  MIRA_CHECK(offset_bytes + static_cast<size_t>(shape.numel()) * dtype_size(dtype) <= storage->bytes,
             "view ", shape.str(), " at byte ", offset_bytes, " runs past its storage of ", storage->bytes, " bytes");
  Tensor t;
  t.storage_ = std::move(storage);
  t.offset_ = offset_bytes;
  t.shape_ = shape;
  t.dtype_ = dtype;
  return t;
}

void* Tensor::raw() const {
  MIRA_CHECK(defined(), "use of an undefined tensor");
  return static_cast<char*>(storage_->data) + offset_;
}

void Tensor::check_type(size_t elem_size) const {
  MIRA_CHECK(defined(), "use of an undefined tensor");
  MIRA_CHECK(elem_size == dtype_size(dtype_), "data<T>() with an element of ", elem_size, " bytes on a ",
             dtype_name(dtype_), " tensor");
}

Tensor Tensor::reshape(const Shape& shape) const {
  MIRA_CHECK(shape.numel() == numel(), "cannot reshape ", shape_.str(), " to ", shape.str());
  return view_of(storage_, offset_, shape, dtype_);
}

Tensor Tensor::slice_batch(int64_t begin, int64_t end) const {
  MIRA_CHECK(ndim() >= 1 && 0 <= begin && begin <= end && end <= dim(0), "batch slice [", begin, ", ", end,
             ") of ", shape_.str());
  Shape s = shape_;
  s[0] = end - begin;
  const size_t row = static_cast<size_t>(numel() / std::max<int64_t>(dim(0), 1)) * dtype_size(dtype_);
  return view_of(storage_, offset_ + static_cast<size_t>(begin) * row, s, dtype_);
}

Tensor Tensor::to(Device device) const { return to(device, dtype_); }
Tensor Tensor::to(DType dtype) const { return to(this->device(), dtype); }

Tensor Tensor::to(Device device, DType dtype) const {
  Tensor out = empty(shape_, dtype, device);
  out.copy_(*this);
  return out;
}

Tensor Tensor::clone() const { return to(device(), dtype_); }

Tensor Tensor::detach() const {
  Tensor t = *this;
  t.meta_.reset();
  return t;
}

void Tensor::fill_(double value) const {
  if (numel() == 0) return;
  if (is_cuda()) {
    cuda::fill(raw(), dtype_, numel(), value);
  } else {
    cpu::fill(raw(), static_cast<int>(dtype_), numel(), value);
  }
}

void Tensor::zero_() const {
  if (nbytes() == 0) return;  // an empty tensor may have no storage at all (memset(nullptr) is UB)
  if (is_cuda()) {
    cuda::memset_zero(raw(), nbytes());
  } else {
    std::memset(raw(), 0, nbytes());
  }
}

void Tensor::copy_(const Tensor& src) const {
  MIRA_CHECK(src.numel() == numel(), "copy_ from ", src.shape().str(), " into ", shape_.str());
  if (numel() == 0) return;
  const Device sd = src.device(), dd = device();
  if (src.dtype() == dtype_) {
    if (sd.is_cpu() && dd.is_cpu()) {
      std::memcpy(raw(), src.raw(), nbytes());
    } else {
      const bool pinned = (sd.is_cpu() && src.storage()->pinned) || (dd.is_cpu() && storage_->pinned);
      cuda::copy(raw(), dd, src.raw(), sd, nbytes(), pinned);
    }
    return;
  }
  // Convert where the data are, then move: CPU sources convert on the host (to f32 first when
  // the target is bf16), CUDA sources move as they are and convert on the device.
  if (sd.is_cpu() && dd.is_cpu()) {
    cpu::cast(src.raw(), static_cast<int>(src.dtype()), raw(), static_cast<int>(dtype_), numel());
  } else if (sd.is_cuda() && dd.is_cuda()) {
    cuda::cast(src.raw(), src.dtype(), raw(), dtype_, numel());
  } else if (sd.is_cpu()) {
    const DType mid = dtype_;  // dd is CUDA: dtype_ is not f64; the host holds no bf16
    Tensor staged = empty(shape_, mid == DType::BF16 ? DType::F32 : mid, Device::cpu());
    cpu::cast(src.raw(), static_cast<int>(src.dtype()), staged.raw(), static_cast<int>(staged.dtype()), numel());
    Tensor dev = staged.to(dd);
    if (dev.dtype() != dtype_) {
      cuda::cast(dev.raw(), dev.dtype(), raw(), dtype_, numel());
    } else {
      cuda::copy(raw(), dd, dev.raw(), dd, nbytes(), false);
    }
  } else {  // CUDA -> CPU with conversion
    const DType mid = src.dtype() == DType::BF16 ? DType::F32 : src.dtype();
    Tensor dev = src.dtype() == mid ? src : src.to(sd, mid);
    Tensor host = dev.to(Device::cpu());
    cpu::cast(host.raw(), static_cast<int>(mid), raw(), static_cast<int>(dtype_), numel());
  }
}

std::vector<double> Tensor::to_vector() const {
  std::vector<double> out(static_cast<size_t>(numel()));
  if (numel() == 0) return out;
  Tensor h = is_cuda() ? to(Device::cpu(), dtype_ == DType::BF16 ? DType::F32 : dtype_) : *this;
  cpu::cast(h.raw(), static_cast<int>(h.dtype()), out.data(), static_cast<int>(DType::F64), numel());
  return out;
}

double Tensor::item() const {
  MIRA_CHECK(numel() == 1, "item() of a tensor with ", numel(), " elements");
  return to_vector()[0];
}

std::string Tensor::str() const {
  return std::string(dtype_name(dtype_)) + shape_.str() + " " + device().str();
}

bool Tensor::requires_grad() const { return meta_ && meta_->requires_grad; }

Tensor& Tensor::set_requires_grad(bool on) {
  if (!meta_) meta_ = std::make_shared<AutogradMeta>();
  MIRA_CHECK(!on || dtype_is_float(dtype_), "only floating-point tensors can require gradients");
  meta_->requires_grad = on;
  return *this;
}

Tensor Tensor::grad() const { return meta_ ? meta_->grad : Tensor(); }

void Tensor::set_grad(const Tensor& g) {
  if (!meta_) meta_ = std::make_shared<AutogradMeta>();
  MIRA_CHECK(!g.defined() || g.shape() == shape_, "gradient of shape ", g.shape().str(), " for a tensor of shape ",
             shape_.str());
  meta_->grad = g;
}

void Tensor::retain_grad() {
  if (!meta_) meta_ = std::make_shared<AutogradMeta>();
  meta_->retain_grad = true;
}

}  // namespace mira
