// Multi-crop loader on the CPU: a pool of threads decodes (ImageFolder: JPEG / PNG with DCT
// downscaling chosen per sample) and augments samples into a ring of `prefetch` batch buffers,
// while the training step consumes finished batches in order. The ring bounds memory and
// is the prefetch queue: workers run ahead of the consumer by at most prefetch - 1 batches, and
// the consumer waits only when the pipeline is slower than the step.
//
// Determinism: each sample's views depend only on (seed, epoch, dataset index, view) (see
// data/augment.h), and every sample is written to its own place in its batch, so the batches are
// bit-identical for any number of threads.
//
// GPU augmentation (LoaderConfig::gpu_augment, CUDA builds): the threads only decode and draw
// each view's decisions, into per-sample pinned staging buffers of the slot; the consumer side
// then copies a finished batch to a device arena on the loader's own data stream and runs the
// CUDA augmentation there (data/augment_cuda.h), into device output tensors of the slot. As soon
// as batch k is handed out, the next finished batches are submitted too, so their copies and
// kernels run while the step consumes batch k; the engine's stream waits (on the GPU, not the
// host) for a batch's kernels before using it, and the data stream waits for the step that used
// a slot's outputs before overwriting them. IDX / CIFAR datasets are uploaded to the GPU whole
// (as RGB, padded as the recipe asks) at construction: no copies per batch at all.
//
// Bad files (ImageFolder): the first failure of a file prints one warning and counts it; the file
// is then skipped for the rest of the run. Its place in the batch is taken by the next readable
// dataset index (wrapping), so batches stay full and deterministic.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "data/augment.h"
#include "data/augment_cuda.h"
#include "data/dataset.h"
#include "data/jpeg.h"
#include "engine/tensor.h"

namespace mira::data {

struct LoaderConfig {
  int64_t batch_size = 256;  // per rank
  int threads = 0;           // decode + augment threads; 0: hardware concurrency
  int prefetch = 3;          // batch buffers in the ring (>= 2 to overlap with the step)
  SamplerConfig sampler;     // seed, shuffle, rank, world, drop_last
  DecodeOptions decode;
  bool dct_downscale = true;  // decode JPEGs at M/8 when every view allows it
  bool pinned = false;        // page-locked batch buffers (CUDA builds), for async copies
  bool quiet = false;         // no warnings on stderr (they are still counted)
  bool gpu_augment = false;   // decode on the CPU, augment on CUDA device `device` (see above)
  int device = 0;
  DType gpu_dtype = DType::BF16;  // F32 or BF16 views out of the GPU augmentation
};

// One batch. Its tensors alias the loader's ring buffer: they stay valid until the next call
// to Loader::next (copy them, or start the host-to-device copy, before that).
struct Batch {
  int64_t index = -1;            // batch number in the epoch
  std::vector<Tensor> views;     // per view: [B, S, S, 3] normalised; f32 CPU, or gpu_dtype
                                 // on the device with gpu_augment
  Tensor labels;                 // i64 [B]
  std::vector<int64_t> samples;  // dataset indices (after skipping bad files)
};

// One sample before augmentation: its source image (decoded, gray made RGB, padded as the
// recipe asks) and every view's decisions. The CPU path augments it at once (load_sample); the
// GPU path copies the pixels to the device and augments there with the same decisions.
struct StagedSample {
  const uint8_t* pixels = nullptr;  // RGB u8 HWC, h x w: into `own`, the scratch or the dataset
  int h = 0, w = 0;
  int orig_h = 0, orig_w = 0;       // size the views were drawn on (larger after DCT downscaling)
  std::vector<ViewParams> params;   // one per view
  std::vector<uint8_t> own;         // decoded pixels (ImageFolder)
};

struct SampleScratch {
  AugScratch aug;
  std::vector<uint8_t> rgb;
  StagedSample staged;
};

// Decodes sample `index` and draws its views. with_pixels = false: only the decisions (an
// in-memory dataset that already lives on the GPU). Throws on an unreadable file.
void stage_sample(const Dataset& ds, const MultiCropRecipe& recipe, int64_t index, uint64_t seed, int64_t epoch,
                  const LoaderConfig& cfg, StagedSample& out, std::vector<uint8_t>& rgb_scratch,
                  bool with_pixels = true);
// The CPU augmentation of a staged sample: view v written to out[v] + 0 .. S*S*3.
void augment_staged(const StagedSample& st, const MultiCropRecipe& recipe, const std::vector<float*>& out,
                    AugScratch& scratch);
// Both: every view of one sample (the single-sample path the loader runs on its threads).
void load_sample(const Dataset& ds, const MultiCropRecipe& recipe, int64_t index, uint64_t seed, int64_t epoch,
                 const LoaderConfig& cfg, const std::vector<float*>& out, SampleScratch& scratch);

class Loader {
 public:
  Loader(const Dataset& ds, MultiCropRecipe recipe, LoaderConfig cfg);
  ~Loader();
  Loader(const Loader&) = delete;
  Loader& operator=(const Loader&) = delete;

  // Begins an epoch (abandoning what is left of the previous one).
  void start_epoch(int64_t epoch);
  int64_t batches_per_epoch() const { return num_batches_; }
  // The next batch of the epoch in order; false after the last one.
  bool next(Batch& out);

  int64_t skipped_files() const { return skipped_.load(); }
  int threads() const { return static_cast<int>(workers_.size()); }
  const MultiCropRecipe& recipe() const { return recipe_; }

 private:
  struct GpuStage {  // one sample, staged for the GPU
    std::shared_ptr<Storage> pinned;  // RGB u8 (empty for a GPU-resident dataset)
    size_t bytes = 0;
    int h = 0, w = 0, orig_h = 0, orig_w = 0;
    std::vector<ViewParams> params;
  };
  struct Slot {
    std::vector<Tensor> views;
    Tensor labels;
    std::vector<int64_t> samples;
    int64_t batch = -1;
    int64_t remaining = 0;
    std::vector<GpuStage> staged;  // gpu_augment: per position
    Tensor arena;                  // gpu_augment: device u8, the batch's images
    std::vector<std::shared_ptr<Storage>> jobs;  // gpu_augment: per view, B pinned GpuViewJobs
  };
  void worker_loop();
  void run_task(int64_t task, SampleScratch& scratch);
  void stage_for_gpu(Slot& slot, int64_t pos, int64_t index, SampleScratch& scratch);
  void submit_gpu(int64_t batch);  // called with mu_ held, the batch complete
  bool batch_complete(int64_t batch) const;
  // Event ids of slot i: its outputs consumed by the step; its copies and kernels done.
  static int ev_consumed(int64_t i) { return static_cast<int>(2 * i); }
  static int ev_ready(int64_t i) { return static_cast<int>(2 * i + 1); }
  // After allocating device memory the data stream will write: it waits for the work queued on
  // the engine's stream (the caching allocator may hand out a block that work still uses).
  void data_stream_after_compute();
  bool file_is_bad(int64_t index);
  void mark_bad(int64_t index, const std::string& why);

  const Dataset& ds_;
  MultiCropRecipe recipe_;
  LoaderConfig cfg_;
  std::vector<Slot> slots_;
  std::vector<int64_t> order_;
  int64_t epoch_ = -1, num_batches_ = 0;

  std::mutex mu_;
  std::condition_variable work_cv_, done_cv_;
  int64_t next_task_ = 0, total_tasks_ = 0;  // sample positions of the epoch
  int64_t window_ = 0;                       // oldest batch still held (by the consumer or in work)
  bool handed_ = false;                      // batch window_ is out with the consumer
  int64_t active_ = 0;                       // tasks being processed
  bool stop_ = false;
  std::exception_ptr error_;
  std::vector<std::thread> workers_;

  // gpu_augment
  std::unique_ptr<GpuStaging> gpu_;
  std::vector<std::unique_ptr<GpuAugmenter>> augmenters_;  // one per view
  Tensor resident_;                                        // in-memory dataset on the device
  int64_t submitted_ = 0;                                  // batches of the epoch queued on the GPU

  std::mutex bad_mu_;
  std::set<int64_t> bad_;
  std::atomic<int64_t> skipped_{0};
};

}  // namespace mira::data
