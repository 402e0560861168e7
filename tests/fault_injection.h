// Shared by the fault-injection tests (test_fault_injection*, test_disk_full,
// test_numerical_faults): a sandbox with a small synthetic IDX dataset, the mira_pretrain command
// line for a tiny fast model, child processes, and checks on what a run left on disk.
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "apps/pretrain/run_dir.h"
#include "engine/safetensors.h"
#include "testing.h"

namespace mira::testing {

namespace fs = std::filesystem;

inline const std::string& pretrain_app() {
  static const std::string app = std::string(MIRA_BINARY_DIR) + "/apps/mira_pretrain";
  return app;
}

struct PretrainSandbox : mira::testing::SyntheticRunDir {
  explicit PretrainSandbox(const std::string& tag) : SyntheticRunDir("mira_" + tag, 128) {}

  // argv of a tiny, fast run (8 steps per epoch of 16 images) writing to `run` (absolute, or
  // relative to the sandbox); `extra` are more arguments.
  std::vector<std::string> args(const fs::path& run, const std::vector<std::string>& extra) const {
    std::vector<std::string> a = {pretrain_app(),
                                  "--config",
                                  std::string(MIRA_SOURCE_DIR) + "/configs/fashion_mnist_tiny.json",
                                  "--data",
                                  (dir / "data").string(),
                                  "--out",
                                  (run.is_absolute() ? run : dir / run).string()};
    for (const char* s : {"model.widths=[4,4,8,8]", "model.blocks=[1,1,1,1]", "model.proj_hidden=16", "model.proj_out=8",
                          "model.prototypes=16", "data.train_subset=0", "train.batch_size=16", "data.threads=1",
                          "train.log_every=1", "eval.test_data=\"\"", "optim.warmup_epochs=0"}) {
      a.push_back("--set");
      a.push_back(s);
    }
    a.insert(a.end(), extra.begin(), extra.end());
    return a;
  }
};

struct ChildOptions {
  std::string log;          // stdout + stderr go here ("" = /dev/null)
  rlim_t fsize_limit = 0;   // RLIMIT_FSIZE in bytes (0 = none); SIGXFSZ is ignored so writes fail with EFBIG
};

inline pid_t spawn(const std::vector<std::string>& argv, const ChildOptions& o = {}) {
  const pid_t pid = ::fork();
  if (pid != 0) return pid;
  const int fd = ::open(o.log.empty() ? "/dev/null" : o.log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd >= 0) {
    ::dup2(fd, 1);
    ::dup2(fd, 2);
  }
  if (o.fsize_limit) {
    ::signal(SIGXFSZ, SIG_IGN);  // kept across exec: an oversized write fails with EFBIG instead
    rlimit r{o.fsize_limit, o.fsize_limit};
    ::setrlimit(RLIMIT_FSIZE, &r);
  }
  std::vector<char*> cargv;
  for (const std::string& s : argv) cargv.push_back(const_cast<char*>(s.c_str()));
  cargv.push_back(nullptr);
  ::execv(cargv[0], cargv.data());
  ::_exit(127);
}

// Exit code, or 128 + signal.
inline int wait_child(pid_t pid) {
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

inline int run_to_end(const std::vector<std::string>& argv, const ChildOptions& o = {}) {
  return wait_child(spawn(argv, o));
}

// The largest step among the complete lines of metrics.jsonl (0 when none).
inline int64_t last_logged_step(const fs::path& metrics) {
  std::ifstream in(metrics);
  int64_t last = 0;
  for (std::string line; std::getline(in, line);) {
    try {
      const Json j = Json::parse(line);
      last = std::max<int64_t>(last, j.at("step").get<int64_t>());
    } catch (const std::exception&) {
      // a line cut by the kill
    }
  }
  return last;
}

// Every checkpoint file of a run loads, holds finite values and says it is the step its name
// says. Returns the newest step (0 when there is none); counts files in *n.
inline int64_t verify_checkpoints(const fs::path& run, int* n = nullptr) {
  int64_t newest = 0;
  int count = 0;
  for (const apps::CheckpointInfo& c : apps::list_checkpoints(run.string())) {
    CAPTURE(c.path);
    SafetensorsFile f;
    REQUIRE_NOTHROW(f = load_safetensors(c.path));
    REQUIRE(f.metadata.count("step"));
    CHECK(std::stoll(f.metadata.at("step")) == c.step);
    CHECK(f.tensors.count("optimizer.momentum"));
    for (const auto& [name, t] : f.tensors) {
      if (t.dtype() != DType::F32) continue;
      const float* p = t.data<float>();
      for (int64_t i = 0; i < t.numel(); ++i)
        if (!std::isfinite(p[i])) FAIL_CHECK(name << " holds a non-finite value in " << c.path);
    }
    newest = std::max(newest, c.step);
    ++count;
  }
  if (n) *n = count;
  return newest;
}

// Files in the checkpoint folder that are not checkpoints (temp files left by a killed write).
inline int stray_files(const fs::path& run) {
  int n = 0;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(run / "checkpoints", ec))
    if (e.path().filename().string().find(".tmp") != std::string::npos) ++n;
  return n;
}

// metrics.jsonl holds steps 1..last, each once, every line valid JSON.
inline void check_metrics_consecutive(const fs::path& metrics, int64_t last) {
  std::ifstream in(metrics);
  int64_t expect = 1;
  for (std::string line; std::getline(in, line); ++expect) {
    CAPTURE(line);
    Json j;
    REQUIRE_NOTHROW(j = Json::parse(line));
    REQUIRE(j.at("step").get<int64_t>() == expect);
  }
  CHECK(expect - 1 == last);
}

inline std::map<std::string, std::vector<double>> checkpoint_values(const std::string& path) {
  std::map<std::string, std::vector<double>> out;
  for (auto& [k, t] : load_safetensors(path).tensors) out[k] = t.to_vector();
  return out;
}

}  // namespace mira::testing
