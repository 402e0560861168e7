#include "engine/grad_sync.h"

#include <unordered_set>

#include "engine/error.h"
#include "engine/ops.h"

namespace mira {

GradSync::GradSync(const ParamStore& store, Communicator& comm, size_t bucket_bytes, size_t first_bucket_bytes)
    : grads_(store.flat_grads()), comm_(comm) {
  MIRA_CHECK(store.finalized(), "GradSync: the parameter store is not finalised");
  MIRA_CHECK(bucket_bytes > 0 && first_bucket_bytes > 0, "GradSync: bucket sizes must be > 0");
  const size_t esz = dtype_size(store.dtype());
  const auto& entries = store.entries();
  Bucket cur;
  size_t cap = first_bucket_bytes;
  auto close = [&] {
    if (cur.params == 0) return;
    buckets_.push_back(cur);
    cur = Bucket();
    cap = bucket_bytes;
  };
  for (size_t i = entries.size(); i-- > 0;) {
    const ParamStore::Entry& e = entries[i];
    if (e.kind != ParamStore::Kind::Param) continue;
    const int64_t end = e.offset + e.shape.numel();
    if (cur.params == 0) cur.end = end;
    cur.begin = e.offset;
    ++cur.params;
    bucket_of_[e.view.meta().get()] = buckets_.size();
    if (static_cast<size_t>(cur.end - cur.begin) * esz >= cap) close();
  }
  close();
  remaining_.assign(buckets_.size(), 0);
}

void GradSync::begin() {
  MIRA_CHECK(tape_size() > 0, "GradSync::begin: call it after the forward pass (the autograd tape is empty)");
  // A step that failed inside backward left reductions in flight: complete them first (every
  // rank started the same ones), so this step's collectives line up again.
  std::vector<std::unique_ptr<PendingReduce>> stale;
  stale.swap(pending_);
  for (auto& p : stale) p->wait();
  for (size_t b = 0; b < buckets_.size(); ++b) remaining_[b] = buckets_[b].params;
  next_ = 0;
  started_in_backward_ = 0;
  in_backward_ = true;
  // Parameters that take no part in this step's graph will never be reported: they are complete
  // now (otherwise their bucket, and every bucket after it, would wait for finish()).
  std::unordered_set<const AutogradMeta*> on_tape;
  for (const AutogradMeta* m : tape_leaves()) on_tape.insert(m);
  for (const auto& [meta, b] : bucket_of_)
    if (!on_tape.count(meta)) --remaining_[b];
  start_ready_buckets();
}

LeafReadyFn GradSync::hook() {
  return [this](const AutogradMeta& leaf) { on_ready(leaf); };
}

void GradSync::on_ready(const AutogradMeta& leaf) {
  auto it = bucket_of_.find(&leaf);
  if (it == bucket_of_.end()) return;  // not one of this store's parameters
  MIRA_CHECK(remaining_[it->second] > 0, "GradSync: a parameter was reported complete twice (begin() not called?)");
  --remaining_[it->second];
  start_ready_buckets();
}

void GradSync::start_ready_buckets() {
  while (next_ < buckets_.size() && remaining_[next_] == 0) start(next_++);
}

void GradSync::start(size_t b) {
  const Bucket& k = buckets_[b];
  Tensor range = grads_.slice_batch(k.begin, k.end);
  pending_.push_back(comm_.allreduce_sum_start(range.raw(), range.numel(), range.dtype(), range.device()));
  if (in_backward_) ++started_in_backward_;
}

void GradSync::finish() {
  in_backward_ = false;
  while (next_ < buckets_.size()) start(next_++);
  // Clear the list even when a wait throws: the run stops, and begin() must not see stale work.
  std::vector<std::unique_ptr<PendingReduce>> pending;
  pending.swap(pending_);
  for (auto& p : pending) p->wait();
  const int world = comm_.world_size();
  if (world > 1) grads_.copy_(ops::scale(grads_, 1.0 / world));
}

}  // namespace mira
