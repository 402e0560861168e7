// labels: cpu
// The CPU kernels' thread pool (kernels/cpu/parallel.h): every task once, workers in range,
// exceptions, nested and concurrent calls, the thread count setting.
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <csignal>
#include <cstdlib>
#include <stdexcept>
#include <thread>
#include <vector>

#include "engine/error.h"
#include "kernels/cpu/parallel.h"
#include "testing.h"

using namespace mira;

namespace {

// Restores the default thread count at the end of a test case.
struct Workers {
  explicit Workers(int n) { cpu::set_parallel_workers(n); }
  ~Workers() { cpu::set_parallel_workers(0); }
};

}  // namespace

TEST_CASE("parallel_for: every task runs once, on a worker in range, and the caller waits for all") {
  for (int threads : {1, 2, 4}) {
    CAPTURE(threads);
    Workers w(threads);
    REQUIRE(cpu::parallel_workers() == threads);
    for (int n : {0, 1, 3, 100}) {
      std::vector<std::atomic<int>> runs(static_cast<size_t>(n));
      std::vector<int> worker(static_cast<size_t>(n), -1);
      cpu::parallel_for(n, [&](int t, int wk) {
        runs[static_cast<size_t>(t)].fetch_add(1);
        worker[static_cast<size_t>(t)] = wk;
      });
      for (int t = 0; t < n; ++t) {
        CHECK(runs[static_cast<size_t>(t)].load() == 1);
        CHECK(worker[static_cast<size_t>(t)] >= 0);
        CHECK(worker[static_cast<size_t>(t)] < threads);
      }
    }
  }
}

TEST_CASE("parallel_for: a worker runs one task at a time (per-worker scratch is safe)") {
  Workers w(3);
  std::vector<std::atomic<int>> busy(3);
  std::atomic<int> clashes{0};
  cpu::parallel_for(200, [&](int, int wk) {
    if (busy[static_cast<size_t>(wk)].fetch_add(1) != 0) clashes.fetch_add(1);
    volatile double x = 0;
    for (int i = 0; i < 2000; ++i) x = x + i;
    busy[static_cast<size_t>(wk)].fetch_sub(1);
  });
  CHECK(clashes.load() == 0);
}

TEST_CASE("parallel_for: a task's exception reaches the caller after the other tasks; the pool goes on") {
  Workers w(2);
  std::atomic<int> done{0};
  CHECK_THROWS_WITH_AS(cpu::parallel_for(50,
                                         [&](int t, int) {
                                           if (t == 17) throw std::runtime_error("task 17 failed");
                                           done.fetch_add(1);
                                         }),
                       "task 17 failed", std::runtime_error);
  CHECK(done.load() == 49);
  std::atomic<int> again{0};
  cpu::parallel_for(10, [&](int, int) { again.fetch_add(1); });
  CHECK(again.load() == 10);
}

TEST_CASE("parallel_for: nested calls run in their task, concurrent callers both finish") {
  Workers w(2);
  std::atomic<int> inner{0};
  cpu::parallel_for(4, [&](int, int) {
    cpu::parallel_for(5, [&](int, int wk) {
      CHECK(wk == 0);  // serial, on the task's thread
      inner.fetch_add(1);
    });
  });
  CHECK(inner.load() == 20);
  std::atomic<int> a{0}, b{0};
  std::thread other([&] {
    for (int i = 0; i < 50; ++i) cpu::parallel_for(8, [&](int, int) { b.fetch_add(1); });
  });
  for (int i = 0; i < 50; ++i) cpu::parallel_for(8, [&](int, int) { a.fetch_add(1); });
  other.join();
  CHECK(a.load() == 400);
  CHECK(b.load() == 400);
}

TEST_CASE("parallel_for in a process forked after the pool started: serial, no hang") {
  Workers w(2);
  std::atomic<int> before{0};
  cpu::parallel_for(8, [&](int, int) { before.fetch_add(1); });  // the pool's threads exist now
  REQUIRE(before.load() == 8);
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    std::atomic<int> n{0};
    bool serial = true;
    cpu::parallel_for(100, [&](int, int wk) {
      n.fetch_add(1);
      serial = serial && wk == 0;
    });
    ::_exit(n.load() == 100 && serial ? 0 : 1);
  }
  int status = -1;
  for (int i = 0; i < 200 && ::waitpid(pid, &status, WNOHANG) == 0; ++i) ::usleep(50000);  // 10 s
  if (::waitpid(pid, &status, WNOHANG) == 0) {
    ::kill(pid, SIGKILL);
    ::waitpid(pid, &status, 0);
    FAIL("the forked child hung in parallel_for");
  }
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
}

TEST_CASE("MIRA_CPU_THREADS: read when no count is set; a bad value is an error naming it") {
  const char* old = std::getenv("MIRA_CPU_THREADS");
  const std::string saved = old ? old : "";
  ::setenv("MIRA_CPU_THREADS", "3", 1);
  cpu::set_parallel_workers(0);
  CHECK(cpu::parallel_workers() == 3);
  ::setenv("MIRA_CPU_THREADS", "many", 1);
  cpu::set_parallel_workers(0);
  CHECK_THROWS_WITH_AS(cpu::parallel_workers(), doctest::Contains("MIRA_CPU_THREADS"), Error);
  ::setenv("MIRA_CPU_THREADS", "0", 1);
  cpu::set_parallel_workers(0);
  CHECK_THROWS_AS(cpu::parallel_workers(), Error);
  if (old) {
    ::setenv("MIRA_CPU_THREADS", saved.c_str(), 1);
  } else {
    ::unsetenv("MIRA_CPU_THREADS");
  }
  cpu::set_parallel_workers(0);
  CHECK(cpu::parallel_workers() >= 1);
  CHECK_THROWS_AS(cpu::set_parallel_workers(-1), Error);
}
