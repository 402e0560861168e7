#include "engine/comm.h"

#include <algorithm>
#include <condition_variable>
#include <mutex>

#include "engine/cuda_backend.h"
#include "engine/error.h"

namespace mira {

namespace {

void check_buffer(const void* data, int64_t n, const char* what) {
  MIRA_CHECK(n >= 0, what, ": negative length ", n);
  MIRA_CHECK(n == 0 || data != nullptr, what, ": null buffer of length ", n);
}

void check_dtype(DType dtype, const char* what) {
  MIRA_CHECK(dtype == DType::F32 || dtype == DType::F64, what, ": reductions take f32 or f64 buffers, got ",
             dtype_name(dtype));
}

// ---- ranks as threads of one process

struct ThreadGroup {
  explicit ThreadGroup(int w) : world(w), slots(static_cast<size_t>(w)) {}
  const int world;
  std::mutex mu;
  std::condition_variable cv;
  int arrived = 0;
  uint64_t generation = 0;
  std::vector<std::vector<double>> slots;  // one per rank, read by all after a barrier

  void barrier() {
    std::unique_lock<std::mutex> lock(mu);
    const uint64_t gen = generation;
    if (++arrived == world) {
      arrived = 0;
      ++generation;
      cv.notify_all();
    } else {
      cv.wait(lock, [&] { return generation != gen; });
    }
  }
};

class ThreadComm final : public Communicator {
 public:
  ThreadComm(std::shared_ptr<ThreadGroup> group, int rank) : group_(std::move(group)), rank_(rank) {}
  int rank() const override { return rank_; }
  int world_size() const override { return group_->world; }
  void allreduce_sum(float* data, int64_t n) override { reduce(data, n, false); }
  void allreduce_sum(double* data, int64_t n) override { reduce(data, n, false); }
  void allreduce_max(float* data, int64_t n) override { reduce(data, n, true); }
  void allreduce_max(double* data, int64_t n) override { reduce(data, n, true); }
  void allreduce_sum(void* data, int64_t n, DType dtype, Device device) override {
    reduce_any(data, n, dtype, device, false);
  }
  void allreduce_max(void* data, int64_t n, DType dtype, Device device) override {
    reduce_any(data, n, dtype, device, true);
  }
  void barrier() override { group_->barrier(); }

 private:
  template <typename T>
  void reduce(T* data, int64_t n, bool is_max) {
    check_buffer(data, n, "ThreadComm::allreduce");
    auto& mine = group_->slots[static_cast<size_t>(rank_)];
    mine.assign(data, data + n);
    group_->barrier();
    // Every rank checks every length, so either all ranks throw here or none does.
    for (const auto& s : group_->slots)
      MIRA_CHECK(static_cast<int64_t>(s.size()) == n, "ThreadComm::allreduce: ranks passed different lengths (",
                 s.size(), " and ", n, ")");
    for (int64_t i = 0; i < n; ++i) {
      double acc = group_->slots[0][static_cast<size_t>(i)];
      for (size_t q = 1; q < group_->slots.size(); ++q) {
        const double v = group_->slots[q][static_cast<size_t>(i)];
        acc = is_max ? std::max(acc, v) : acc + v;
      }
      data[i] = static_cast<T>(acc);
    }
    group_->barrier();  // no rank refills its slot before all have read it
  }

  void reduce_any(void* data, int64_t n, DType dtype, Device device, bool is_max) {
    check_buffer(data, n, "ThreadComm::allreduce");
    check_dtype(dtype, "ThreadComm::allreduce");
    if (device.is_cpu()) {
      if (dtype == DType::F32)
        reduce(static_cast<float*>(data), n, is_max);
      else
        reduce(static_cast<double*>(data), n, is_max);
      return;
    }
    const size_t bytes = static_cast<size_t>(n) * dtype_size(dtype);
    std::vector<double> host(static_cast<size_t>(n) + 1);  // f32 or f64 fits in doubles' storage
    cuda::copy(host.data(), Device::cpu(), data, device, bytes, false);
    if (dtype == DType::F32)
      reduce(reinterpret_cast<float*>(host.data()), n, is_max);
    else
      reduce(host.data(), n, is_max);
    cuda::copy(data, device, host.data(), Device::cpu(), bytes, false);
  }

  std::shared_ptr<ThreadGroup> group_;
  int rank_;
};

}  // namespace

void LocalComm::allreduce_sum(float* data, int64_t n) {
  check_buffer(data, n, "allreduce_sum");
}
void LocalComm::allreduce_sum(double* data, int64_t n) {
  check_buffer(data, n, "allreduce_sum");
}
void LocalComm::allreduce_max(float* data, int64_t n) {
  check_buffer(data, n, "allreduce_max");
}
void LocalComm::allreduce_max(double* data, int64_t n) {
  check_buffer(data, n, "allreduce_max");
}
void LocalComm::allreduce_sum(void* data, int64_t n, DType dtype, Device) {
  check_buffer(data, n, "allreduce_sum");
  check_dtype(dtype, "allreduce_sum");
}
void LocalComm::allreduce_max(void* data, int64_t n, DType dtype, Device) {
  check_buffer(data, n, "allreduce_max");
  check_dtype(dtype, "allreduce_max");
}

namespace {
struct FinishedReduce final : PendingReduce {
  void wait() override {}
};
}  // namespace

std::vector<std::pair<double, double>> Communicator::min_max(const std::vector<double>& x) {
  const size_t n = x.size();
  std::vector<double> buf(2 * n);
  for (size_t i = 0; i < n; ++i) buf[i] = x[i], buf[n + i] = -x[i];
  allreduce_max(buf.data(), static_cast<int64_t>(buf.size()));
  std::vector<std::pair<double, double>> out(n);
  for (size_t i = 0; i < n; ++i) out[i] = {-buf[n + i], buf[i]};
  return out;
}

std::unique_ptr<PendingReduce> Communicator::allreduce_sum_start(void* data, int64_t n, DType dtype, Device device) {
  allreduce_sum(data, n, dtype, device);
  return std::make_unique<FinishedReduce>();
}

Communicator& local_comm() {
  static LocalComm comm;
  return comm;
}

std::vector<std::unique_ptr<Communicator>> make_thread_comms(int world_size) {
  MIRA_CHECK(world_size >= 1, "make_thread_comms: world_size must be >= 1, got ", world_size);
  auto group = std::make_shared<ThreadGroup>(world_size);
  std::vector<std::unique_ptr<Communicator>> comms;
  for (int r = 0; r < world_size; ++r) comms.push_back(std::make_unique<ThreadComm>(group, r));
  return comms;
}

}  // namespace mira
