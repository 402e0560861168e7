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
};

// One batch. Its tensors alias the loader's ring buffer: they stay valid until the next call
// to Loader::next (copy them, or start the host-to-device copy, before that).
struct Batch {
  int64_t index = -1;            // batch number in the epoch
  std::vector<Tensor> views;     // per view: f32 [B, S, S, 3] normalised, CPU
  Tensor labels;                 // i64 [B]
  std::vector<int64_t> samples;  // dataset indices (after skipping bad files)
};

// Every view of one sample, written to out[v] + 0 .. S*S*3 (the single-sample path the loader
// runs on its threads; tests and the GPU path share it). Throws on an unreadable file.
struct SampleScratch {
  AugScratch aug;
  std::vector<uint8_t> rgb;
  std::vector<ViewParams> params;
};
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
  struct Slot {
    std::vector<Tensor> views;
    Tensor labels;
    std::vector<int64_t> samples;
    int64_t batch = -1;
    int64_t remaining = 0;
  };
  void worker_loop();
  void run_task(int64_t task, SampleScratch& scratch);
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

  std::mutex bad_mu_;
  std::set<int64_t> bad_;
  std::atomic<int64_t> skipped_{0};
};

}  // namespace mira::data
