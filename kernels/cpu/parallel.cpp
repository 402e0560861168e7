#include "kernels/cpu/parallel.h"

#include <pthread.h>
#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "engine/error.h"

namespace mira::cpu {

namespace {

int env_workers() {
  const char* e = std::getenv("MIRA_CPU_THREADS");
  if (e != nullptr && *e != '\0') {
    char* end = nullptr;
    const long n = std::strtol(e, &end, 10);
    MIRA_CHECK(end != e && *end == '\0' && n >= 1 && n <= 1024, "MIRA_CPU_THREADS must be a thread count >= 1, got '",
               e, "'");
    return static_cast<int>(n);
  }
  // The hardware threads, split between the ranks an MPI launcher started on this machine.
  const unsigned hw = std::thread::hardware_concurrency();
  int local = 1;
  for (const char* name : {"OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS", "MV2_COMM_WORLD_LOCAL_SIZE"}) {
    const char* v = std::getenv(name);
    if (v != nullptr && std::atoi(v) > 0) {
      local = std::atoi(v);
      break;
    }
  }
  return std::max(1, static_cast<int>(hw > 0 ? hw : 1) / local);
}

thread_local bool t_in_task = false;

// A child forked after the pool started has none of its threads: it runs every call serially
// (set by a pthread_atfork handler, registered when the first pool starts threads).
std::atomic<bool> g_forked_child{false};
void on_fork_child() {
  g_forked_child.store(true);
}

class Pool {
 public:
  explicit Pool(int workers) {
    static std::once_flag atfork;
    if (workers > 1) std::call_once(atfork, [] { ::pthread_atfork(nullptr, nullptr, on_fork_child); });
    for (int w = 1; w < workers; ++w) threads_.emplace_back([this, w] { loop(w); });
  }
  ~Pool() {
    {
      std::lock_guard<std::mutex> lk(m_);
      stop_ = true;
    }
    start_cv_.notify_all();
    for (auto& t : threads_) t.join();
  }
  int workers() const { return static_cast<int>(threads_.size()) + 1; }

  // Serial when the pool is taken (another thread's call) or when called from a task.
  void run(int n, const std::function<void(int, int)>& fn) {
    std::unique_lock<std::mutex> owner(owner_, std::try_to_lock);
    if (!owner.owns_lock() || t_in_task || threads_.empty() || n <= 1) {
      serial(n, fn);
      return;
    }
    {
      std::lock_guard<std::mutex> lk(m_);
      fn_ = &fn;
      n_ = n;
      next_.store(0);
      error_ = nullptr;
      joinable_ = true;
      ++generation_;
    }
    start_cv_.notify_all();
    work(0);
    // Every task is claimed: close the call to threads that have not joined it yet and wait
    // only for those that did. A pool thread the OS has not run since the notify (other
    // processes' threads holding the cores) would otherwise hold up the call until it runs:
    // test_mira_assign on 2 cores beside the CUDA emulator's block threads took 141 s, now
    // 123 (41 alone).
    std::unique_lock<std::mutex> lk(m_);
    joinable_ = false;
    done_cv_.wait(lk, [this] { return joined_ == 0; });
    fn_ = nullptr;
    if (error_) std::rethrow_exception(error_);
  }

 private:
  static void serial(int n, const std::function<void(int, int)>& fn) {
    const bool outer = t_in_task;
    t_in_task = true;
    try {
      for (int i = 0; i < n; ++i) fn(i, 0);
    } catch (...) {
      t_in_task = outer;
      throw;
    }
    t_in_task = outer;
  }

  // Claims tasks until none are left.
  void work(int worker) {
    t_in_task = true;
    for (int i = next_.fetch_add(1); i < n_; i = next_.fetch_add(1)) {
      try {
        (*fn_)(i, worker);
      } catch (...) {
        std::lock_guard<std::mutex> lk(m_);
        if (!error_) error_ = std::current_exception();
      }
    }
    t_in_task = false;
  }

  void loop(int worker) {
    uint64_t seen = 0;
    for (;;) {
      {
        std::unique_lock<std::mutex> lk(m_);
        start_cv_.wait(lk, [&] { return stop_ || generation_ != seen; });
        if (stop_) return;
        seen = generation_;
        if (!joinable_) continue;  // the call ended before this thread ran: its data may be gone
        ++joined_;
      }
      work(worker);
      std::lock_guard<std::mutex> lk(m_);
      if (--joined_ == 0) done_cv_.notify_one();
    }
  }

  std::vector<std::thread> threads_;
  std::mutex owner_;  // held by the one caller whose tasks the pool runs
  std::mutex m_;
  std::condition_variable start_cv_, done_cv_;
  const std::function<void(int, int)>* fn_ = nullptr;
  int n_ = 0;
  std::atomic<int> next_{0};
  bool joinable_ = false;  // the current call still takes pool threads (it has unclaimed tasks)
  int joined_ = 0;         // pool threads in the current call, not yet done with it
  uint64_t generation_ = 0;
  bool stop_ = false;
  std::exception_ptr error_;
};

std::mutex g_pool_mutex;
std::unique_ptr<Pool> g_pool;
int g_workers = 0;  // 0: not decided yet

Pool& pool() {
  std::lock_guard<std::mutex> lk(g_pool_mutex);
  if (g_workers == 0) g_workers = env_workers();
  if (!g_pool || g_pool->workers() != g_workers) {
    g_pool.reset();
    g_pool = std::make_unique<Pool>(g_workers);
  }
  return *g_pool;
}

}  // namespace

int parallel_workers() {
  std::lock_guard<std::mutex> lk(g_pool_mutex);
  if (g_workers == 0) g_workers = env_workers();
  return g_workers;
}

void set_parallel_workers(int n) {
  MIRA_CHECK(n >= 0 && n <= 1024, "set_parallel_workers: a thread count >= 1 (0: the default), got ", n);
  std::lock_guard<std::mutex> lk(g_pool_mutex);
  g_workers = n;  // 0: decided again from the environment
}

void parallel_for(int n, const std::function<void(int, int)>& fn) {
  if (n <= 0) return;
  if (n == 1 || t_in_task || g_forked_child.load(std::memory_order_relaxed)) {
    for (int i = 0; i < n; ++i) fn(i, 0);
    return;
  }
  pool().run(n, fn);
}

}  // namespace mira::cpu
