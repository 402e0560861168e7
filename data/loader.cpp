// The CPU multi-crop loader (see loader.h). Work unit: one sample (decode + all views), claimed
// in epoch order under one mutex; claims are cheap next to a decode, so one lock is enough.
#include "data/loader.h"

#include <algorithm>
#include <cstdio>
#include <cstring>

#include "engine/cuda_backend.h"
#include "engine/error.h"

namespace mira::data {

void stage_sample(const Dataset& ds, const MultiCropRecipe& recipe, int64_t index, uint64_t seed, int64_t epoch,
                  const LoaderConfig& cfg, StagedSample& st, std::vector<uint8_t>& rgb, bool with_pixels) {
  const int nv = static_cast<int>(recipe.views.size());
  st.params.resize(nv);
  st.pixels = nullptr;
  if (ds.in_memory()) {
    const int H = ds.height(), W = ds.width(), C = ds.channels();
    st.h = st.orig_h = H + 2 * recipe.pad;
    st.w = st.orig_w = W + 2 * recipe.pad;
    for (int v = 0; v < nv; ++v) st.params[v] = sample_view_params(recipe.views[v], st.h, st.w, seed, epoch, index, v);
    if (with_pixels) {
      st.pixels = ds.pixels() + static_cast<size_t>(index) * H * W * C;
      if (C != 3 || recipe.pad > 0) {
        to_rgb_padded(st.pixels, H, W, C, recipe.pad, rgb);
        st.pixels = rgb.data();
      }
    }
    return;
  }
  const auto* folder = dynamic_cast<const ImageFolderDataset*>(&ds);
  MIRA_CHECK(folder, "stage_sample: dataset ", ds.path(), " is neither in memory nor an image folder");
  // The crop boxes are drawn on the full-size image (known after the header); the decoder then
  // picks the smallest DCT scale at which every view still has at least its output resolution.
  const bool allow_scale = cfg.dct_downscale && recipe.pad == 0;
  Decoded d = decode_image_file(folder->file(index), cfg.decode, [&](int oh, int ow) {
    double needed = 0;
    for (int v = 0; v < nv; ++v) {
      st.params[v] = sample_view_params(recipe.views[v], oh, ow, seed, epoch, index, v);
      const double S = recipe.views[v].size;
      needed = std::max({needed, S / st.params[v].width, S / st.params[v].height});
    }
    return allow_scale ? jpeg_scale_num_for(needed) : 8;
  });
  st.h = d.image.h;
  st.w = d.image.w;
  st.orig_h = d.orig_h;
  st.orig_w = d.orig_w;
  st.own = std::move(d.image.pixels);
  st.pixels = st.own.data();
  if (recipe.pad > 0) {  // pad after decoding (full size, since scaling is off with padding)
    to_rgb_padded(st.pixels, st.h, st.w, 3, recipe.pad, rgb);
    st.own.swap(rgb);
    st.pixels = st.own.data();
    st.h += 2 * recipe.pad;
    st.w += 2 * recipe.pad;
    st.orig_h = st.h;
    st.orig_w = st.w;
    for (int v = 0; v < nv; ++v) st.params[v] = sample_view_params(recipe.views[v], st.h, st.w, seed, epoch, index, v);
  }
}

void augment_staged(const StagedSample& st, const MultiCropRecipe& recipe, const std::vector<float*>& out,
                    AugScratch& scratch) {
  const size_t nv = recipe.views.size();
  MIRA_CHECK(out.size() == nv && st.params.size() == nv, "augment_staged: ", out.size(), " outputs and ",
             st.params.size(), " view decisions for ", nv, " views");
  MIRA_CHECK(st.pixels != nullptr, "augment_staged: the sample was staged without its pixels");
  for (size_t v = 0; v < nv; ++v)
    augment_view(st.pixels, st.h, st.w, st.orig_h, st.orig_w, st.params[v], recipe.views[v], recipe, out[v], scratch);
}

void load_sample(const Dataset& ds, const MultiCropRecipe& recipe, int64_t index, uint64_t seed, int64_t epoch,
                 const LoaderConfig& cfg, const std::vector<float*>& out, SampleScratch& s) {
  MIRA_CHECK(out.size() == recipe.views.size(), "load_sample: ", out.size(), " outputs for ", recipe.views.size(),
             " views");
  stage_sample(ds, recipe, index, seed, epoch, cfg, s.staged, s.rgb);
  augment_staged(s.staged, recipe, out, s.aug);
}

Loader::Loader(const Dataset& ds, MultiCropRecipe recipe, LoaderConfig cfg)
    : ds_(ds), recipe_(std::move(recipe)), cfg_(cfg) {
  MIRA_CHECK(!recipe_.views.empty(), "loader: recipe has no views");
  MIRA_CHECK(cfg_.batch_size > 0, "loader: batch size must be positive");
  MIRA_CHECK(cfg_.prefetch >= 1, "loader: prefetch must be at least 1");
  MIRA_CHECK(ds_.size() > 0, "loader: dataset ", ds_.path(), " is empty");
  if (cfg_.threads <= 0) cfg_.threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  cfg_.sampler.batch_size = cfg_.batch_size;
  const int64_t B = cfg_.batch_size;
  if (cfg_.gpu_augment) {
    MIRA_CHECK(augment_cuda_available(), "loader: GPU augmentation asked for, but ",
               cuda::built_with_cuda() ? "no CUDA device is visible" : "this build has no CUDA");
    MIRA_CHECK(cfg_.gpu_dtype == DType::F32 || cfg_.gpu_dtype == DType::BF16,
               "loader: GPU augmentation writes f32 or bf16, not ", dtype_name(cfg_.gpu_dtype));
    gpu_ = std::make_unique<GpuStaging>(cfg_.device);
    for (size_t v = 0; v < recipe_.views.size(); ++v) augmenters_.push_back(std::make_unique<GpuAugmenter>());
    if (ds_.in_memory()) {  // the whole dataset on the GPU, as RGB, padded
      const int H = ds_.height(), W = ds_.width(), C = ds_.channels(), pad = recipe_.pad;
      const size_t one = static_cast<size_t>(H + 2 * pad) * (W + 2 * pad) * 3;
      Tensor host = Tensor::empty({static_cast<int64_t>(one) * ds_.size()}, DType::U8);
      std::vector<uint8_t> rgb;
      for (int64_t i = 0; i < ds_.size(); ++i) {
        const uint8_t* src = ds_.pixels() + static_cast<size_t>(i) * H * W * C;
        if (C != 3 || pad > 0) {
          to_rgb_padded(src, H, W, C, pad, rgb);
          src = rgb.data();
        }
        std::memcpy(host.data<uint8_t>() + static_cast<size_t>(i) * one, src, one);
      }
      resident_ = host.to(Device::cuda(cfg_.device));
    }
  }
  slots_.resize(cfg_.prefetch);
  for (Slot& s : slots_) {
    for (const ViewSpec& v : recipe_.views) {
      const Shape shape{B, v.size, v.size, 3};
      if (cfg_.gpu_augment) {
        s.views.push_back(Tensor::empty(shape, cfg_.gpu_dtype, Device::cuda(cfg_.device)));
      } else if (cfg_.pinned) {
        auto st = allocate_pinned(static_cast<size_t>(shape.numel()) * sizeof(float));
        s.views.push_back(Tensor::view_of(st, 0, shape, DType::F32));
      } else {
        s.views.push_back(Tensor::empty(shape));
      }
    }
    s.labels = Tensor::empty({B}, DType::I64);
    s.samples.assign(B, -1);
    if (cfg_.gpu_augment) {
      s.staged.resize(B);
      for (size_t v = 0; v < recipe_.views.size(); ++v)
        s.jobs.push_back(allocate_pinned(static_cast<size_t>(B) * sizeof(GpuViewJob)));
    }
  }
  if (gpu_) data_stream_after_compute();  // the output buffers just allocated
  for (int t = 0; t < cfg_.threads; ++t) workers_.emplace_back([this] { worker_loop(); });
}

Loader::~Loader() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stop_ = true;
  }
  work_cv_.notify_all();
  for (std::thread& t : workers_) t.join();
  if (gpu_) gpu_->host_waits_data();  // no copy or kernel in flight reads what is freed next
}

void Loader::start_epoch(int64_t epoch) {
  std::unique_lock<std::mutex> lk(mu_);
  total_tasks_ = next_task_;  // no new claims; let the running ones finish
  done_cv_.wait(lk, [&] { return active_ == 0; });
  if (gpu_) {
    // The abandoned epoch's copies must be done before workers refill the staging buffers,
    // and whatever the step queued must be done before outputs are overwritten.
    gpu_->host_waits_data();
    for (size_t i = 0; i < slots_.size(); ++i) gpu_->record_on_compute(ev_consumed(static_cast<int64_t>(i)));
  }
  submitted_ = 0;
  order_ = epoch_indices(ds_.size(), epoch, cfg_.sampler);
  epoch_ = epoch;
  num_batches_ = cfg_.sampler.drop_last ? static_cast<int64_t>(order_.size()) / cfg_.batch_size
                                        : (static_cast<int64_t>(order_.size()) + cfg_.batch_size - 1) / cfg_.batch_size;
  for (Slot& s : slots_) s.batch = -1;
  next_task_ = 0;
  total_tasks_ = std::min<int64_t>(static_cast<int64_t>(order_.size()), num_batches_ * cfg_.batch_size);
  window_ = 0;
  handed_ = false;
  error_ = nullptr;
  lk.unlock();
  work_cv_.notify_all();
}

void Loader::worker_loop() {
  SampleScratch scratch;
  std::unique_lock<std::mutex> lk(mu_);
  const int64_t B = cfg_.batch_size, P = static_cast<int64_t>(slots_.size());
  for (;;) {
    work_cv_.wait(lk, [&] { return stop_ || (next_task_ < total_tasks_ && next_task_ / B < window_ + P); });
    if (stop_) return;
    const int64_t task = next_task_++;
    const int64_t b = task / B;
    Slot& slot = slots_[b % P];
    if (task % B == 0) {  // first claim of this batch: the slot's previous batch is released
      slot.batch = b;
      slot.remaining = std::min(B, total_tasks_ - b * B);
    }
    ++active_;
    lk.unlock();
    try {
      run_task(task, scratch);
    } catch (...) {
      lk.lock();
      if (!error_) error_ = std::current_exception();
      lk.unlock();
    }
    lk.lock();
    --active_;
    --slot.remaining;
    done_cv_.notify_all();
  }
}

bool Loader::file_is_bad(int64_t index) {
  std::lock_guard<std::mutex> lk(bad_mu_);
  return bad_.count(index) != 0;
}

void Loader::mark_bad(int64_t index, const std::string& why) {
  std::lock_guard<std::mutex> lk(bad_mu_);
  if (!bad_.insert(index).second) return;  // another thread got there first
  ++skipped_;
  if (!cfg_.quiet) std::fprintf(stderr, "warning: skipping unreadable image: %s\n", why.c_str());
}

void Loader::run_task(int64_t task, SampleScratch& scratch) {
  const int64_t B = cfg_.batch_size, P = static_cast<int64_t>(slots_.size());
  const int64_t b = task / B, pos = task % B;
  Slot& slot = slots_[b % P];
  std::vector<float*> out(gpu_ ? 0 : recipe_.views.size());
  for (size_t v = 0; v < out.size(); ++v) {
    const int S = recipe_.views[v].size;
    out[v] = slot.views[v].data<float>() + static_cast<size_t>(pos) * S * S * 3;
  }
  const int64_t n = ds_.size();
  int64_t index = order_[task];
  for (int64_t tries = 0;; ++tries) {
    MIRA_CHECK(tries < n, "dataset ", ds_.path(), " has no readable image");
    if (!file_is_bad(index)) {
      try {
        if (gpu_)
          stage_for_gpu(slot, pos, index, scratch);
        else
          load_sample(ds_, recipe_, index, cfg_.sampler.seed, epoch_, cfg_, out, scratch);
        break;
      } catch (const Error& e) {
        if (ds_.in_memory()) throw;  // in-memory data cannot be "unreadable": a real error
        mark_bad(index, e.what());
      }
    }
    index = (index + 1) % n;
  }
  slot.samples[pos] = index;
  slot.labels.data<int64_t>()[pos] = ds_.label(index);
}

void Loader::stage_for_gpu(Slot& slot, int64_t pos, int64_t index, SampleScratch& scratch) {
  StagedSample& st = scratch.staged;
  const bool resident = resident_.defined();
  stage_sample(ds_, recipe_, index, cfg_.sampler.seed, epoch_, cfg_, st, scratch.rgb, !resident);
  GpuStage& g = slot.staged[static_cast<size_t>(pos)];
  g.h = st.h;
  g.w = st.w;
  g.orig_h = st.orig_h;
  g.orig_w = st.orig_w;
  g.params = st.params;
  g.bytes = 0;
  if (resident) return;
  g.bytes = static_cast<size_t>(st.h) * st.w * 3;
  if (!g.pinned || g.pinned->bytes < g.bytes) g.pinned = allocate_pinned(g.bytes + g.bytes / 4);  // grows rarely
  std::memcpy(g.pinned->data, st.pixels, g.bytes);
}

void Loader::data_stream_after_compute() {
  const int ev = ev_consumed(static_cast<int64_t>(slots_.size()));  // an id past every slot's
  gpu_->record_on_compute(ev);
  gpu_->data_waits(ev);
}

bool Loader::batch_complete(int64_t batch) const {
  const Slot& slot = slots_[static_cast<size_t>(batch % static_cast<int64_t>(slots_.size()))];
  return slot.batch == batch && slot.remaining == 0;
}

void Loader::submit_gpu(int64_t batch) {
  const int64_t P = static_cast<int64_t>(slots_.size()), B = cfg_.batch_size, i = batch % P;
  Slot& slot = slots_[static_cast<size_t>(i)];
  const int64_t n = std::min(B, total_tasks_ - batch * B);
  gpu_->data_waits(ev_consumed(i));  // the step that last read this slot's outputs
  std::vector<int64_t> offset(static_cast<size_t>(n));
  const uint8_t* src = nullptr;
  if (resident_.defined()) {
    const GpuStage& g0 = slot.staged[0];
    const int64_t one = static_cast<int64_t>(g0.h) * g0.w * 3;
    for (int64_t j = 0; j < n; ++j) offset[j] = slot.samples[j] * one;
    src = resident_.data<uint8_t>();
  } else {
    int64_t total = 0;
    for (int64_t j = 0; j < n; ++j) {
      offset[j] = total;
      total += static_cast<int64_t>(slot.staged[j].bytes);
    }
    if (!slot.arena.defined() || slot.arena.numel() < total) {
      gpu_->host_waits_data();  // the old arena may still be read by queued kernels
      slot.arena = Tensor::empty({total + total / 4}, DType::U8, Device::cuda(cfg_.device));
      data_stream_after_compute();
    }
    uint8_t* dst = slot.arena.data<uint8_t>();
    for (int64_t j = 0; j < n; ++j)
      gpu_->copy_to_device(dst + offset[j], slot.staged[j].pinned->data, slot.staged[j].bytes);
    src = dst;
  }
  for (size_t v = 0; v < recipe_.views.size(); ++v) {
    // The slot's pinned job array: its copy is asynchronous, and the slot is not refilled before
    // the data stream has passed ev_ready (Loader::next waits for it when releasing the slot).
    auto* jobs = static_cast<GpuViewJob*>(slot.jobs[v]->data);
    for (int64_t j = 0; j < n; ++j) {
      const GpuStage& g = slot.staged[j];
      jobs[j] = make_gpu_job(g.params[v], recipe_.views[v], offset[j], g.h, g.w, g.orig_h, g.orig_w);
    }
    augmenters_[v]->run(src, jobs, static_cast<int>(n), recipe_.views[v], recipe_, slot.views[v].raw(), cfg_.gpu_dtype,
                        gpu_->stream());
  }
  gpu_->record_on_data(ev_ready(i));
}

bool Loader::next(Batch& out) {
  std::unique_lock<std::mutex> lk(mu_);
  MIRA_CHECK(epoch_ >= 0, "loader: call start_epoch before next");
  if (handed_ && gpu_) {
    // The batch handed out last time is done with once the step queued so far has run; its
    // staging buffers and job arrays go back to the workers once the data stream has passed its
    // kernels (ev_ready, recorded after them; long passed: the step needed it).
    const int64_t i = window_ % static_cast<int64_t>(slots_.size());
    gpu_->record_on_compute(ev_consumed(i));
    gpu_->host_waits(ev_ready(i));
  }
  if (handed_) {
    ++window_;
    handed_ = false;
    work_cv_.notify_all();
  }
  if (window_ >= num_batches_) return false;
  const int64_t P = static_cast<int64_t>(slots_.size());
  Slot& slot = slots_[window_ % P];
  done_cv_.wait(lk, [&] { return (slot.batch == window_ && slot.remaining == 0) || error_; });
  if (error_) std::rethrow_exception(error_);
  if (gpu_) {
    if (submitted_ <= window_) submit_gpu(submitted_++);
    // Run ahead: queue the batches the workers have already finished, so their copies and
    // kernels overlap with the step that consumes this one.
    const int64_t P = static_cast<int64_t>(slots_.size());
    while (submitted_ < num_batches_ && submitted_ < window_ + P && batch_complete(submitted_))
      submit_gpu(submitted_++);
    gpu_->compute_waits(ev_ready(window_ % P));
  }
  handed_ = true;
  out.index = window_;
  const int64_t B = slot.labels.dim(0);
  const int64_t n = std::min(B, total_tasks_ - window_ * B);
  out.views.clear();
  for (const Tensor& t : slot.views) out.views.push_back(n == B ? t : t.slice_batch(0, n));
  out.labels = n == B ? slot.labels : slot.labels.slice_batch(0, n);
  out.samples.assign(slot.samples.begin(), slot.samples.begin() + n);
  return true;
}

}  // namespace mira::data
