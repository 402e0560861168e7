// Autograd: a thread-local tape of nodes, recorded in forward order and replayed in reverse
// by backward(loss). A node holds the output's AutogradMeta and a closure that receives the
// output's gradient and adds into its inputs' gradients.
//
// The gradient rule (the one thing to remember):
// - backward() always ACCUMULATES into the gradients of leaves (tensors marked
//   requires_grad by the user, e.g. parameters). Zero them between steps (ParamStore::zero_grad
//   does it in one memset over the flat gradient buffer).
// - A gradient buffer that does not exist yet is allocated and OVERWRITTEN by the first
//   contribution (no zero fill); later contributions accumulate. grad_slot() tells kernels which.
// - Intermediate (non-leaf) gradients are freed as soon as their node has run, unless
//   retain_grad() was called on that tensor.
// - Under NoGradGuard nothing is recorded (the EMA teacher's forward, evaluation).
#pragma once

#include <functional>
#include <initializer_list>
#include <vector>

#include "engine/tensor.h"

namespace mira {

bool grad_enabled();

class NoGradGuard {
 public:
  NoGradGuard();
  ~NoGradGuard();
  NoGradGuard(const NoGradGuard&) = delete;
  NoGradGuard& operator=(const NoGradGuard&) = delete;

 private:
  bool prev_;
};

using BackwardFn = std::function<void(const Tensor& grad_out)>;

// True when the op with these inputs must be recorded (grad mode on, some input requires grad).
bool needs_grad(std::initializer_list<const Tensor*> inputs);
// Marks `out` as a non-leaf requiring grad and appends the node. `inputs` are the tensors the
// closure may write gradients into (the same list as needs_grad): the node remembers which of
// them are leaves, so backward() knows when a leaf's gradient is complete. Call only when
// needs_grad().
void record(const char* name, Tensor& out, std::initializer_list<const Tensor*> inputs, BackwardFn fn);

// Called by backward() once per leaf on the tape, as soon as the leaf's gradient is complete:
// right after the earliest-recorded node that takes the leaf as an input has run (or been
// passed over because no gradient reached it). Data-parallel training starts reducing a bucket
// of gradients from here while the rest of the backward pass runs (engine/grad_sync.h).
using LeafReadyFn = std::function<void(const AutogradMeta& leaf)>;

// Seeds the loss gradient with `seed` (default: ones; the loss must then have one element),
// replays the tape in reverse and clears it. on_leaf_ready (optional): see LeafReadyFn.
void backward(const Tensor& loss, const Tensor& seed = Tensor(), const LeafReadyFn& on_leaf_ready = {});

size_t tape_size();
// The leaves (tensors requiring grad) that some node on this thread's tape takes as an input,
// each once, in the order of their first use.
std::vector<const AutogradMeta*> tape_leaves();
void clear_tape();  // drops recorded nodes without running them
// Counts the tapes this thread has finished (each backward() and clear_tape() ends one): a
// tensor recorded under an earlier epoch is no longer on the tape (ParamStore's cast cache).
uint64_t tape_epoch();

struct GradSlot {
  Tensor grad;
  bool accumulate;  // false: the buffer is fresh, the kernel must overwrite every element
};
// The gradient buffer of t (allocated on first use, same shape/dtype/device as t).
GradSlot grad_slot(const Tensor& t);

}  // namespace mira
