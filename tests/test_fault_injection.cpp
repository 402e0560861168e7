// labels: cpu
// Fault injection for checkpoints: mira_pretrain is killed with SIGKILL at random moments, many
// times in a row on one run directory, half of the kills timed to land while a checkpoint is being
// written (inotify sees the temp file appear). After every kill: every checkpoint on disk loads and
// holds finite values, the newest never goes backwards, and the steps logged since the newest
// checkpoint are at most train.checkpoint_every (nothing older is ever lost). Then `--resume auto`
// finishes the run, and the result is bit-identical to a run that was never interrupted, with
// metrics.jsonl holding every step exactly once.
//
// MIRA_FI_KILLS sets the number of kills (default 20 here; test_fault_injection_long, labelled
// slow, includes this file with 150); MIRA_FI_SEED the seed of the random delays.
#include <poll.h>
#include <sys/inotify.h>

#include <chrono>
#include <cstdio>
#include <random>
#include <thread>

#include "fault_injection.h"

#ifndef MIRA_FI_KILLS
#define MIRA_FI_KILLS 20
#endif

using namespace mira;
using namespace mira::testing;

namespace {

constexpr int kCheckpointEvery = 2;

std::vector<std::string> run_args(const PretrainSandbox& sb, const std::string& run, std::vector<std::string> extra) {
  // 8 steps per epoch; enough epochs that the killed runs never reach the end.
  std::vector<std::string> a = {"--set", "train.checkpoint_every=" + std::to_string(kCheckpointEvery), "--set",
                                "train.epochs=200"};
  a.insert(a.end(), extra.begin(), extra.end());
  return sb.args(run, a);
}

// Waits until a temp checkpoint file appears in dir (or timeout_ms passes); true when it did.
bool wait_for_temp_file(int ifd, int timeout_ms) {
  const auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  alignas(inotify_event) char buf[4096];
  while (std::chrono::steady_clock::now() < end) {
    pollfd p{ifd, POLLIN, 0};
    const int left = static_cast<int>(
        std::chrono::duration_cast<std::chrono::milliseconds>(end - std::chrono::steady_clock::now()).count());
    if (::poll(&p, 1, std::max(left, 1)) <= 0) continue;
    const ssize_t n = ::read(ifd, buf, sizeof buf);
    for (ssize_t off = 0; off < n;) {
      const auto* ev = reinterpret_cast<const inotify_event*>(buf + off);
      if (ev->len && std::string(ev->name).find(".tmp") != std::string::npos) return true;
      off += static_cast<ssize_t>(sizeof(inotify_event) + ev->len);
    }
  }
  return false;
}

}  // namespace

TEST_CASE("SIGKILL at random moments: checkpoints stay loadable, resume loses at most checkpoint_every steps") {
  const char* env_kills = std::getenv("MIRA_FI_KILLS");
  const int kills = env_kills ? std::atoi(env_kills) : MIRA_FI_KILLS;
  const char* env_seed = std::getenv("MIRA_FI_SEED");
  const unsigned seed = env_seed ? static_cast<unsigned>(std::atoi(env_seed)) : 20240901u;
  std::mt19937 rng(seed);
  PretrainSandbox sb("fault_kill");
  const fs::path run = sb.dir / "run";
  const fs::path ckdir = run / "checkpoints";
  const std::string log = (sb.dir / "child.log").string();
  // Each kill lets the run advance by up to ~1 s (about 15 steps on an idle 2-core machine):
  // enough epochs that no run reaches the end before its kill, whatever the count (the
  // 150-kill run outran 200 epochs there). Every run here, and the reference, uses the same.
  const std::string epochs = "train.epochs=" + std::to_string(std::max(200, 20 * kills));

  int killed = 0, kills_on_write = 0, temp_left = 0, cut_writes = 0, verified = 0, exited_early = 0;
  int64_t newest = 0, max_lost = 0, first_logged = -1;
  for (int i = 0; i < kills; ++i) {
    CAPTURE(i);
    const bool on_write = (i % 2 == 1) && fs::is_directory(ckdir);
    int ifd = -1;
    if (on_write) {
      ifd = ::inotify_init1(IN_CLOEXEC | IN_NONBLOCK);
      REQUIRE(ifd >= 0);
      REQUIRE(::inotify_add_watch(ifd, ckdir.c_str(), IN_CREATE) >= 0);
    }
    const pid_t pid = spawn(run_args(sb, "run", {"--resume", "auto", "--set", epochs}), {log});
    REQUIRE(pid > 0);
    if (on_write) {
      // Sometimes a checkpoint passes before the kill, so it does not always hit the first write
      // after start-up; half the kills are immediate, the others after 0-300 us, to land at
      // different points of the write (data, fsync, rename).
      const int skip = std::uniform_int_distribution<int>(0, 1)(rng);
      bool seen = false;
      for (int k = 0; k <= skip; ++k) seen = wait_for_temp_file(ifd, 20000);
      if (rng() % 2) std::this_thread::sleep_for(std::chrono::microseconds(std::uniform_int_distribution<int>(0, 300)(rng)));
      kills_on_write += seen;
      ::close(ifd);
    } else {
      std::this_thread::sleep_for(std::chrono::milliseconds(std::uniform_int_distribution<int>(30, 1000)(rng)));
    }
    ::kill(pid, SIGKILL);
    const int rc = wait_child(pid);
    if (rc != 128 + SIGKILL) {
      ++exited_early;
      FAIL_CHECK("mira_pretrain exited with " << rc << " before the kill:\n" << slurp_text(log));
      continue;
    }
    ++killed;
    int n = 0;
    const int64_t logged = last_logged_step(run / "metrics.jsonl");
    const int64_t c = verify_checkpoints(run, &n);
    verified += n;
    const int stray = stray_files(run);
    cut_writes += stray > temp_left;  // this kill interrupted a checkpoint write
    temp_left = stray;
    CHECK(c >= newest);  // a kill never destroys the newest checkpoint
    CHECK(logged - c <= kCheckpointEvery);
    max_lost = std::max(max_lost, logged - c);
    newest = c;
    if (first_logged < 0) first_logged = logged;
  }
  REQUIRE(exited_early == 0);
  CHECK(newest > 0);

  // Finish: a few more steps after the newest checkpoint, then compare with an uninterrupted run.
  const int64_t final_step = newest + 3;
  const std::string max_steps = "train.max_steps=" + std::to_string(final_step);
  REQUIRE(run_to_end(run_args(sb, "run", {"--resume", "auto", "--set", epochs, "--set", max_steps}), {log}) == 0);
  REQUIRE(run_to_end(run_args(sb, "ref", {"--set", epochs, "--set", max_steps}), {log}) == 0);
  const auto resumed = apps::list_checkpoints(run.string()), ref = apps::list_checkpoints((sb.dir / "ref").string());
  REQUIRE(!resumed.empty());
  REQUIRE(!ref.empty());
  CHECK(resumed.back().step == final_step);
  CHECK(ref.back().step == final_step);
  const auto a = checkpoint_values(resumed.back().path), b = checkpoint_values(ref.back().path);
  REQUIRE(a.size() == b.size());
  for (const auto& [k, v] : a) CHECK_MESSAGE(v == b.at(k), k << " differs from the uninterrupted run");
  check_metrics_consecutive(run / "metrics.jsonl", final_step);

  std::printf(
      "fault injection: %d SIGKILLs (%d timed on a checkpoint write), %d checkpoint files verified, newest step %lld, "
      "at most %lld steps logged after the newest checkpoint (checkpoint_every %d), %d kills cut a checkpoint write "
      "(temp file left, ignored by resume), resumed run bit-identical to an uninterrupted one at step %lld\n",
      killed, kills_on_write, verified, static_cast<long long>(newest), static_cast<long long>(max_lost),
      kCheckpointEvery, cut_writes, static_cast<long long>(final_step));
}

TEST_CASE("--resume auto skips a damaged newest checkpoint and uses the previous one") {
  // Two kinds of damage: cut in half (a copy from a crashed node, a full disk outside our
  // write), and one flipped bit in the last tensor's data (the structure intact, a value not:
  // only the checksum tells).
  for (const bool flip : {false, true}) {
    CAPTURE(flip);
    PretrainSandbox sb(flip ? "fault_flipped" : "fault_damaged");
    const fs::path run = sb.dir / "run";
    const std::string log = (sb.dir / "child.log").string();
    // keep_every 1 (x checkpoint_every 2): checkpoints at 2 and 4 stay.
    REQUIRE(run_to_end(run_args(sb, "run", {"--set", "train.max_steps=4", "--set", "train.keep_every=1"}), {log}) == 0);
    auto all = apps::list_checkpoints(run.string());
    REQUIRE(all.size() >= 2);
    REQUIRE(all.back().step == 4);
    const int64_t prev = all[all.size() - 2].step;
    if (flip) {
      std::fstream f(all.back().path, std::ios::in | std::ios::out | std::ios::binary);
      f.seekg(-100, std::ios::end);
      char c = 0;
      f.read(&c, 1);
      c = static_cast<char>(c ^ 0x04);
      f.seekp(-100, std::ios::end);
      f.write(&c, 1);
    } else {
      fs::resize_file(all.back().path, fs::file_size(all.back().path) / 2);
    }
    REQUIRE(run_to_end(
                run_args(sb, "run", {"--resume", "auto", "--set", "train.max_steps=5", "--set", "train.keep_every=1"}),
                {log}) == 0);
    const std::string out = slurp_text(log);
    INFO(out);
    CHECK(out.find("warning: skipping checkpoint") != std::string::npos);
    if (flip) CHECK(out.find("checksum") != std::string::npos);
    CHECK(out.find("resuming from " + apps::checkpoint_path(run.string(), prev)) != std::string::npos);
    CHECK(apps::list_checkpoints(run.string()).back().step == 5);
    check_metrics_consecutive(run / "metrics.jsonl", 5);
    // The damaged file is kept, out of the way, for whoever wants to look at it.
    CHECK(fs::exists(all.back().path + ".damaged"));
  }
}

TEST_CASE("--resume auto over damaged checkpoints only: an error, and nothing is changed") {
  PretrainSandbox sb("fault_all_damaged");
  const fs::path run = sb.dir / "run";
  const std::string log = (sb.dir / "child.log").string();
  // keep_every 0: the newest checkpoint is the only one.
  REQUIRE(run_to_end(run_args(sb, "run", {"--set", "train.max_steps=4"}), {log}) == 0);
  auto all = apps::list_checkpoints(run.string());
  REQUIRE(all.size() == 1);
  fs::resize_file(all[0].path, fs::file_size(all[0].path) / 2);
  const std::string ckpt = slurp_text(all[0].path), metrics = slurp_text(run / "metrics.jsonl");
  REQUIRE(!metrics.empty());
  // Before: "no checkpoint: starting from scratch", metrics.jsonl emptied, the damaged file pruned.
  CHECK(run_to_end(run_args(sb, "run", {"--resume", "auto", "--set", "train.max_steps=6"}), {log}) == 1);
  const std::string out = slurp_text(log);
  INFO(out);
  CHECK(out.find("--resume auto: none of the 1 checkpoint(s)") != std::string::npos);
  CHECK(out.find("starting from scratch") == std::string::npos);
  CHECK(slurp_text(all[0].path) == ckpt);
  CHECK(slurp_text(run / "metrics.jsonl") == metrics);
  CHECK(apps::list_checkpoints(run.string()).size() == 1);
}

TEST_CASE("metrics.jsonl cut mid-line by a crash: the resumed run drops the cut line") {
  PretrainSandbox sb("fault_metrics");
  const fs::path run = sb.dir / "run";
  const std::string log = (sb.dir / "child.log").string();
  REQUIRE(run_to_end(run_args(sb, "run", {"--set", "train.max_steps=4"}), {log}) == 0);
  {
    std::ofstream m(run / "metrics.jsonl", std::ios::app);
    m << "{\"step\": 5, \"epoch\": 0, \"loss\": 4.2";  // what a kill in the middle of a write leaves
  }
  REQUIRE(run_to_end(run_args(sb, "run", {"--resume", "auto", "--set", "train.max_steps=6"}), {log}) == 0);
  check_metrics_consecutive(run / "metrics.jsonl", 6);
}
