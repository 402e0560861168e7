#include "engine/autograd.h"

#include <unordered_set>
#include <vector>

#include "engine/profile.h"

namespace mira {

namespace {

struct Node {
  const char* name;
  std::shared_ptr<AutogradMeta> out;
  BackwardFn fn;
  std::vector<std::shared_ptr<AutogradMeta>> leaves;  // inputs that are leaves requiring grad
};

thread_local bool g_grad_enabled = true;
thread_local std::vector<Node> g_tape;
thread_local uint64_t g_tape_epoch = 0;

}  // namespace

bool grad_enabled() { return g_grad_enabled; }

NoGradGuard::NoGradGuard() : prev_(g_grad_enabled) { g_grad_enabled = false; }
NoGradGuard::~NoGradGuard() { g_grad_enabled = prev_; }

bool needs_grad(std::initializer_list<const Tensor*> inputs) {
  if (!g_grad_enabled) return false;
  for (const Tensor* t : inputs)
    if (t && t->defined() && t->requires_grad()) return true;
  return false;
}

void record(const char* name, Tensor& out, std::initializer_list<const Tensor*> inputs, BackwardFn fn) {
  Node node{name, nullptr, std::move(fn), {}};
  for (const Tensor* t : inputs) {
    if (t && t->defined() && t->requires_grad() && t->meta()->is_leaf) node.leaves.push_back(t->meta());
  }
  out.set_requires_grad(true);
  out.meta()->is_leaf = false;
  node.out = out.meta();
  g_tape.push_back(std::move(node));
}

GradSlot grad_slot(const Tensor& t) {
  MIRA_CHECK(t.meta() != nullptr, "grad_slot of a tensor outside autograd");
  AutogradMeta& m = *t.meta();
  if (m.grad.defined()) return {m.grad, true};
  m.grad = Tensor::empty(t.shape(), t.dtype(), t.device());
  return {m.grad, false};
}

void backward(const Tensor& loss, const Tensor& seed, const LeafReadyFn& on_leaf_ready) {
  MIRA_CHECK(loss.requires_grad(), "backward() on a tensor that does not require grad");
  // Move the tape out first: closures may record nothing, and an exception leaves it empty.
  std::vector<Node> tape;
  tape.swap(g_tape);
  ++g_tape_epoch;
  if (seed.defined()) {
    MIRA_CHECK(seed.shape() == loss.shape(), "backward seed ", seed.shape().str(), " for loss ", loss.shape().str());
    loss.meta()->grad = seed.clone();
  } else {
    MIRA_CHECK(loss.numel() == 1, "backward() without a seed needs a one-element loss, got ", loss.shape().str());
    loss.meta()->grad = Tensor::full(loss.shape(), 1.0, loss.dtype(), loss.device());
  }
  // ready_after[i]: the leaves whose earliest use is node i; their gradients are complete once
  // the reverse replay has passed node i.
  std::vector<std::vector<const AutogradMeta*>> ready_after;
  if (on_leaf_ready) {
    ready_after.resize(tape.size());
    std::unordered_set<const AutogradMeta*> seen;
    for (size_t i = 0; i < tape.size(); ++i)
      for (const auto& leaf : tape[i].leaves)
        if (seen.insert(leaf.get()).second) ready_after[i].push_back(leaf.get());
  }
  NoGradGuard no_grad;  // backward closures never record
  for (size_t i = tape.size(); i-- > 0;) {
    Node& node = tape[i];
    AutogradMeta& out = *node.out;
    if (out.grad.defined()) {  // else nothing flowed here from the loss
      prof::Scope scope([&] { return std::string("bwd ") + node.name; }, out.grad.device());
      node.fn(out.grad);
      if (!out.retain_grad && !out.is_leaf) out.grad = Tensor();
    }
    if (on_leaf_ready)
      for (const AutogradMeta* leaf : ready_after[i]) on_leaf_ready(*leaf);
  }
}

size_t tape_size() { return g_tape.size(); }

std::vector<const AutogradMeta*> tape_leaves() {
  std::vector<const AutogradMeta*> out;
  std::unordered_set<const AutogradMeta*> seen;
  for (const Node& n : g_tape)
    for (const auto& leaf : n.leaves)
      if (seen.insert(leaf.get()).second) out.push_back(leaf.get());
  return out;
}
void clear_tape() {
  g_tape.clear();
  ++g_tape_epoch;
}
uint64_t tape_epoch() { return g_tape_epoch; }

}  // namespace mira
