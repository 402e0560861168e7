// GradSync: averages a ParamStore's gradients over the ranks of a communicator in buckets that
// start reducing while backward() is still running (the gradient half of data parallelism).
//
// The flat gradient buffer is cut into buckets of consecutive parameters, taken from the END of
// the store (the head's and the last stage's gradients are complete first): the first bucket
// holds about first_bucket_bytes (so communication starts early), the others about
// bucket_bytes (PyTorch DDP's defaults: 1 MiB and 25 MiB). backward() reports each parameter
// whose gradient is complete (autograd.h, LeafReadyFn); when every parameter of the next
// bucket in line is complete, its all-reduce is started (Communicator::allreduce_sum_start).
// Buckets start strictly in order, so every rank starts the same reductions in the same order.
// finish() starts what is left, waits for every bucket and divides by the world size.
//
// How much overlaps: a parameter is complete once the earliest-recorded node using it has run,
// i.e. after the backward of the first crop forwarded (the replay runs the crops in reverse).
// With several crops per step, reductions therefore overlap with that first crop's backward
// (the trainer forwards the first global crop first, the largest), not with the other crops'.
//
//   GradSync sync(model.student(), comm);
//   store.zero_grad();
//   sync.begin();
//   backward(loss, Tensor(), sync.hook());
//   sync.finish();   // gradients are now the mean over ranks
//
// A bucket's reduction covers its whole range of the flat buffer, padding included (padding is
// zero on every rank). The result equals one all-reduce of the whole buffer element by element:
// the buckets change when values are summed, not how.
#pragma once

#include <cstddef>
#include <memory>
#include <unordered_map>
#include <vector>

#include "engine/autograd.h"
#include "engine/comm.h"
#include "engine/param_store.h"

namespace mira {

class GradSync {
 public:
  GradSync(const ParamStore& store, Communicator& comm, size_t bucket_bytes = size_t(25) << 20,
           size_t first_bucket_bytes = size_t(1) << 20);
  GradSync(const GradSync&) = delete;
  GradSync& operator=(const GradSync&) = delete;

  // After the forward, before backward(): every bucket waits for its parameters on the tape
  // (those the graph does not use are complete already).
  void begin();
  LeafReadyFn hook();  // pass to backward(); valid while this object lives
  void finish();     // after backward(): start the rest, wait for all, divide by the world size

  struct Bucket {
    int64_t begin = 0, end = 0;  // element range of the flat gradient buffer
    int params = 0;
  };
  const std::vector<Bucket>& buckets() const { return buckets_; }
  // Of the last step: buckets whose reduction was started from inside backward().
  int started_during_backward() const { return started_in_backward_; }

 private:
  void on_ready(const AutogradMeta& leaf);
  void start_ready_buckets();
  void start(size_t b);

  Tensor grads_;
  Communicator& comm_;
  std::vector<Bucket> buckets_;
  std::unordered_map<const AutogradMeta*, size_t> bucket_of_;
  std::vector<int> remaining_;
  std::vector<std::unique_ptr<PendingReduce>> pending_;
  size_t next_ = 0;  // next bucket to start
  bool in_backward_ = false;
  int started_in_backward_ = 0;
};

}  // namespace mira
