// The CPU multi-crop loader (see loader.h). Work unit: one sample (decode + all views), claimed
// in epoch order under one mutex; claims are cheap next to a decode, so one lock is enough.
#include "data/loader.h"

#include <algorithm>
#include <cstdio>

#include "engine/error.h"

namespace mira::data {

void load_sample(const Dataset& ds, const MultiCropRecipe& recipe, int64_t index, uint64_t seed, int64_t epoch,
                 const LoaderConfig& cfg, const std::vector<float*>& out, SampleScratch& s) {
  const int nv = static_cast<int>(recipe.views.size());
  MIRA_CHECK(static_cast<int>(out.size()) == nv, "load_sample: ", out.size(), " outputs for ", nv, " views");
  s.params.resize(nv);
  if (ds.in_memory()) {
    const int H = ds.height(), W = ds.width(), C = ds.channels();
    const uint8_t* src = ds.pixels() + static_cast<size_t>(index) * H * W * C;
    int PH = H, PW = W;
    if (C != 3 || recipe.pad > 0) {
      to_rgb_padded(src, H, W, C, recipe.pad, s.rgb);
      src = s.rgb.data();
      PH = H + 2 * recipe.pad;
      PW = W + 2 * recipe.pad;
    }
    for (int v = 0; v < nv; ++v) {
      s.params[v] = sample_view_params(recipe.views[v], PH, PW, seed, epoch, index, v);
      augment_view(src, PH, PW, PH, PW, s.params[v], recipe.views[v], recipe, out[v], s.aug);
    }
    return;
  }
  const auto* folder = dynamic_cast<const ImageFolderDataset*>(&ds);
  MIRA_CHECK(folder, "load_sample: dataset ", ds.path(), " is neither in memory nor an image folder");
  // The crop boxes are drawn on the full-size image (known after the header); the decoder then
  // picks the smallest DCT scale at which every view still has at least its output resolution.
  const bool allow_scale = cfg.dct_downscale && recipe.pad == 0;
  Decoded d = decode_image_file(folder->file(index), cfg.decode, [&](int oh, int ow) {
    double needed = 0;
    for (int v = 0; v < nv; ++v) {
      s.params[v] = sample_view_params(recipe.views[v], oh, ow, seed, epoch, index, v);
      const double S = recipe.views[v].size;
      needed = std::max({needed, S / s.params[v].width, S / s.params[v].height});
    }
    return allow_scale ? jpeg_scale_num_for(needed) : 8;
  });
  const uint8_t* src = d.image.pixels.data();
  int H = d.image.h, W = d.image.w, OH = d.orig_h, OW = d.orig_w;
  if (recipe.pad > 0) {  // pad after decoding (full size, since scaling is off with padding)
    to_rgb_padded(src, H, W, 3, recipe.pad, s.rgb);
    src = s.rgb.data();
    H += 2 * recipe.pad;
    W += 2 * recipe.pad;
    OH = H;
    OW = W;
    for (int v = 0; v < nv; ++v) s.params[v] = sample_view_params(recipe.views[v], H, W, seed, epoch, index, v);
  }
  for (int v = 0; v < nv; ++v) augment_view(src, H, W, OH, OW, s.params[v], recipe.views[v], recipe, out[v], s.aug);
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
  slots_.resize(cfg_.prefetch);
  for (Slot& s : slots_) {
    for (const ViewSpec& v : recipe_.views) {
      const Shape shape{B, v.size, v.size, 3};
      if (cfg_.pinned) {
        auto st = allocate_pinned(static_cast<size_t>(shape.numel()) * sizeof(float));
        s.views.push_back(Tensor::view_of(st, 0, shape, DType::F32));
      } else {
        s.views.push_back(Tensor::empty(shape));
      }
    }
    s.labels = Tensor::empty({B}, DType::I64);
    s.samples.assign(B, -1);
  }
  for (int t = 0; t < cfg_.threads; ++t) workers_.emplace_back([this] { worker_loop(); });
}

Loader::~Loader() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stop_ = true;
  }
  work_cv_.notify_all();
  for (std::thread& t : workers_) t.join();
}

void Loader::start_epoch(int64_t epoch) {
  std::unique_lock<std::mutex> lk(mu_);
  total_tasks_ = next_task_;  // no new claims; let the running ones finish
  done_cv_.wait(lk, [&] { return active_ == 0; });
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
  std::vector<float*> out(recipe_.views.size());
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

bool Loader::next(Batch& out) {
  std::unique_lock<std::mutex> lk(mu_);
  MIRA_CHECK(epoch_ >= 0, "loader: call start_epoch before next");
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
