#include "engine/optim.h"

#include <cmath>
#include <cstring>

#ifdef MIRA_HAS_CUDA
#include "engine/cuda/context.h"
#include "kernels/cuda/optim.cuh"
#endif

namespace mira {

void ema_update(const Tensor& ema, const Tensor& online, double m) {
  MIRA_CHECK(ema.ndim() == 1 && online.ndim() == 1 && online.numel() >= ema.numel(),
             "ema_update: flat buffers expected, got ", ema.str(), " and ", online.str());
  MIRA_CHECK(ema.dtype() == online.dtype() && ema.device() == online.device(), "ema_update: ", ema.str(), " vs ",
             online.str());
  MIRA_CHECK(m >= 0.0 && m <= 1.0, "ema_update: momentum ", m, " outside [0, 1]");
  const int64_t n = ema.numel();
  if (ema.is_cuda()) {
#ifdef MIRA_HAS_CUDA
    MIRA_CHECK(ema.dtype() == DType::F32, "ema_update on CUDA needs f32 master weights");
    gpu::ema_update(ema.data<float>(), online.data<float>(), n, m, cuda::CudaContext::get().stream());
#else
    MIRA_FAIL("this build has no CUDA backend");
#endif
  } else if (ema.dtype() == DType::F32) {
    cpu::ema_update<float>(ema.data<float>(), online.data<float>(), n, m);
  } else if (ema.dtype() == DType::F64) {
    cpu::ema_update<double>(ema.data<double>(), online.data<double>(), n, m);
  } else {
    MIRA_FAIL("ema_update: unsupported dtype ", dtype_name(ema.dtype()));
  }
}

Optimizer::Optimizer(ParamStore& ps, const OptimConfig& cfg) : ps_(ps), cfg_(cfg) {
  MIRA_CHECK(ps.finalized(), "Optimizer: the parameter store is not finalized");
  MIRA_CHECK(cfg.name == "sgd" || cfg.name == "lars", "unknown optimizer '", cfg.name, "' (expected sgd or lars)");
  MIRA_CHECK(cfg.momentum >= 0 && cfg.momentum < 1, "optimizer momentum ", cfg.momentum, " outside [0, 1)");
  MIRA_CHECK(cfg.weight_decay >= 0, "negative weight decay ", cfg.weight_decay);
  for (const ParamStore::Entry& e : ps.entries()) {
    if (e.kind != ParamStore::Kind::Param) continue;
    segs_.push_back({e.offset, e.shape.numel(), e.shape.ndim() > 1 ? cpu::ParamSegment::kDecay : 0});
  }
  mu_ = Tensor::zeros(ps.flat_params().shape(), ps.dtype(), ps.device());
}

void Optimizer::set_frozen(const std::string& prefix, bool frozen) {
  size_t k = 0;
  bool any = false;
  for (const ParamStore::Entry& e : ps_.entries()) {
    if (e.kind != ParamStore::Kind::Param) continue;
    if (e.name.compare(0, prefix.size(), prefix) == 0) {
      any = true;
      if (frozen) {
        segs_[k].flags |= cpu::ParamSegment::kFrozen;
      } else {
        segs_[k].flags &= ~cpu::ParamSegment::kFrozen;
      }
    }
    ++k;
  }
  MIRA_CHECK(any, "Optimizer::set_frozen: no parameter starts with '", prefix, "'");
  tables_dirty_ = true;
}

void Optimizer::upload_tables() {
#ifdef MIRA_HAS_CUDA
  const int nseg = static_cast<int>(segs_.size());
  nchunks_ = gpu::optim_chunk_count(segs_.data(), nseg);
  std::vector<gpu::OptimChunk> chunks(static_cast<size_t>(nchunks_));
  gpu::optim_make_chunks(segs_.data(), nseg, chunks.data());
  auto upload = [&](const void* src, size_t bytes) {
    Tensor h = Tensor::empty({static_cast<int64_t>(bytes)}, DType::U8);
    std::memcpy(h.raw(), src, bytes);
    return h.to(ps_.device());
  };
  d_segs_ = upload(segs_.data(), segs_.size() * sizeof(cpu::ParamSegment));
  d_chunks_ = upload(chunks.data(), chunks.size() * sizeof(gpu::OptimChunk));
  d_partial_ = Tensor::empty({static_cast<int64_t>(2 * sizeof(double) * std::max(nchunks_, 1))}, DType::U8, ps_.device());
  d_norms_ = Tensor::empty({static_cast<int64_t>(2 * sizeof(double) * std::max(nseg, 1))}, DType::U8, ps_.device());
#endif
  tables_dirty_ = false;
}

void Optimizer::step(double lr) {
  MIRA_CHECK(std::isfinite(lr) && lr >= 0, "learning rate ", lr, " is not a finite non-negative number");
  ps_.clear_casts();  // mixed-precision copies of the old values
  const Tensor p = ps_.flat_params(), g = ps_.flat_grads();
  const bool lars = cfg_.name == "lars";
  if (p.is_cuda()) {
#ifdef MIRA_HAS_CUDA
    MIRA_CHECK(p.dtype() == DType::F32, "CUDA optimizer needs f32 master weights");
    if (tables_dirty_) upload_tables();
    gpu::sgd_step(p.data<float>(), g.data<float>(), mu_.data<float>(),
                  static_cast<const cpu::ParamSegment*>(d_segs_.raw()), static_cast<int>(segs_.size()),
                  static_cast<const gpu::OptimChunk*>(d_chunks_.raw()), nchunks_, static_cast<double*>(d_partial_.raw()),
                  static_cast<double*>(d_norms_.raw()), lr, cfg_.momentum, cfg_.weight_decay, lars, cfg_.eta,
                  cuda::CudaContext::get().stream());
#else
    MIRA_FAIL("this build has no CUDA backend");
#endif
  } else if (p.dtype() == DType::F32) {
    cpu::sgd_step<float>(p.data<float>(), g.data<float>(), mu_.data<float>(), segs_.data(), static_cast<int>(segs_.size()),
                         lr, cfg_.momentum, cfg_.weight_decay, lars, cfg_.eta);
  } else {
    cpu::sgd_step<double>(p.data<double>(), g.data<double>(), mu_.data<double>(), segs_.data(),
                          static_cast<int>(segs_.size()), lr, cfg_.momentum, cfg_.weight_decay, lars, cfg_.eta);
  }
}

}  // namespace mira
