// labels: cpu
// A full disk while mira_pretrain writes: the run directory lives on a small tmpfs (mounted when
// the test runs as root, as in CI), filled by a filler file to a random level before each resume,
// so ENOSPC hits at a different point each time (checkpoint data, metrics line, config). Every
// time: the run stops with an error that says the disk is full, the previous checkpoint is
// intact, no temp file is left, and once space is freed `--resume auto` continues; at the end
// metrics.jsonl holds every step once. Without permission to mount, the same is done with a
// file-size limit (RLIMIT_FSIZE, EFBIG) on the child (MIRA_DISK_FULL_RLIMIT=1 forces that path);
// if neither works the test says SKIPPED and exits 77.
#include <sys/mount.h>

#include <cerrno>
#include <cstring>
#include <random>

#include "fault_injection.h"

using namespace mira;
using namespace mira::testing;

namespace {

struct TmpfsMount {
  fs::path dir;
  bool mounted = false;
  TmpfsMount(const fs::path& d, size_t bytes) : dir(d) {
    if (bytes == 0) return;
    fs::create_directories(d);
    const std::string opts = "size=" + std::to_string(bytes);
    mounted = ::mount("tmpfs", d.c_str(), "tmpfs", MS_NOSUID | MS_NODEV, opts.c_str()) == 0;
    if (!mounted) std::printf("disk-full test: cannot mount a tmpfs (%s)\n", std::strerror(errno));
  }
  ~TmpfsMount() {
    if (mounted) ::umount2(dir.c_str(), MNT_DETACH);
  }
};

size_t free_bytes(const fs::path& p) { return static_cast<size_t>(fs::space(p).available); }

// Writes a filler file so that about `leave` bytes stay free (tmpfs counts whole pages).
void fill_to(const fs::path& filler, size_t leave) {
  fs::remove(filler);
  const size_t avail = free_bytes(filler.parent_path());
  if (avail <= leave) return;
  std::ofstream f(filler, std::ios::binary);
  std::vector<char> block(1 << 16, 'x');
  for (size_t left = avail - leave; left > 0;) {
    const size_t n = std::min(left, block.size());
    f.write(block.data(), static_cast<std::streamsize>(n));
    if (!f) break;
    left -= n;
  }
}

// The "error: ..." line of a run's output, without the source location.
std::string error_line(const std::string& out) {
  const size_t at = out.find("error: ");
  if (at == std::string::npos) return "";
  std::string line = out.substr(at, out.find('\n', at) - at);
  const size_t src = line.find(" (/");
  return src == std::string::npos ? line : line.substr(0, src);
}

bool says_disk_full(const std::string& out) {
  return out.find("No space left on device") != std::string::npos || out.find("disk full") != std::string::npos ||
         out.find("File too large") != std::string::npos;
}

}  // namespace

TEST_CASE("a full disk while writing is an error that keeps the previous checkpoint") {
  PretrainSandbox sb("disk_full");
  const std::string log = (sb.dir / "child.log").string();
  auto args = [&](const fs::path& run, int64_t max_steps, bool resume) {
    std::vector<std::string> extra = {"--set", "train.checkpoint_every=2", "--set", "train.epochs=50", "--set",
                                      "train.max_steps=" + std::to_string(max_steps)};
    if (resume) {
      extra.push_back("--resume");
      extra.push_back("auto");
    }
    return sb.args(run, extra);
  };

  // The size of one checkpoint, from an ordinary run.
  REQUIRE(run_to_end(args(sb.dir / "probe", 2, false), {log}) == 0);
  const auto probe = apps::list_checkpoints((sb.dir / "probe").string());
  REQUIRE(probe.size() == 1);
  const size_t ckpt = fs::file_size(probe[0].path);

  std::mt19937 rng(7);
  int failures = 0, rounds = 0;
  int64_t newest = 0;
  const bool force_rlimit = std::getenv("MIRA_DISK_FULL_RLIMIT") != nullptr;  // to test the fallback
  TmpfsMount mnt(sb.dir / "tmpfs", force_rlimit ? 0 : 3 * ckpt + (1 << 20));
  if (mnt.mounted && !force_rlimit) {
    const fs::path run = mnt.dir / "run", filler = mnt.dir / "filler";
    REQUIRE(run_to_end(args(run, 2, false), {log}) == 0);
    newest = 2;
    for (int i = 0; i < 8; ++i, ++rounds) {
      CAPTURE(i);
      // Leave between nothing and about one and a half checkpoints free; every third round only
      // a few pages, so the config or a metrics line is what meets the full disk.
      const size_t leave = i % 3 == 0 ? std::uniform_int_distribution<size_t>(0, 3 * 4096)(rng)
                                      : std::uniform_int_distribution<size_t>(0, ckpt * 3 / 2)(rng);
      fill_to(filler, leave);
      const int rc = run_to_end(args(run, newest + 6, true), {log});
      const std::string out = slurp_text(log);
      if (rc != 0) {
        ++failures;
        CHECK_MESSAGE(rc == 1, out);
        CHECK_MESSAGE(says_disk_full(out), out);
        std::printf("  run %d: %s\n", i, error_line(out).c_str());
      }
      const int64_t c = verify_checkpoints(run);
      CHECK(c >= newest);
      CHECK(stray_files(run) == 0);
      newest = c;
      fs::remove(filler);
      // With space again the run continues from its newest checkpoint.
      REQUIRE_MESSAGE(run_to_end(args(run, newest + 2, true), {log}) == 0, slurp_text(log));
      newest = verify_checkpoints(run);
    }
    check_metrics_consecutive(run / "metrics.jsonl", newest);
    std::printf("disk-full test (tmpfs of %zu bytes, checkpoint %zu bytes): %d of %d runs stopped by ENOSPC, "
                "every checkpoint intact, no temp file left, each resumed\n",
                3 * ckpt + (1 << 20), ckpt, failures, rounds);
    CHECK(failures >= 3);
    return;
  }

  // Fallback: a per-file size limit in the child (EFBIG instead of ENOSPC).
  const fs::path run = sb.dir / "run";
  REQUIRE(run_to_end(args(run, 2, false), {log}) == 0);
  newest = 2;
  for (int i = 0; i < 4; ++i, ++rounds) {
    CAPTURE(i);
    ChildOptions o{log, static_cast<rlim_t>(std::uniform_int_distribution<size_t>(ckpt / 4, ckpt - 1)(rng))};
    const int rc = run_to_end(args(run, newest + 4, true), o);
    const std::string out = slurp_text(log);
    if (rc == 128 + SIGXFSZ) {
      std::printf("SKIPPED: neither a tmpfs mount nor RLIMIT_FSIZE is usable here\n");
      std::_Exit(77);
    }
    CHECK_MESSAGE(rc == 1, out);
    CHECK_MESSAGE(says_disk_full(out), out);
    std::printf("  run %d: %s\n", i, error_line(out).c_str());
    ++failures;
    CHECK(verify_checkpoints(run) == newest);
    CHECK(stray_files(run) == 0);
    REQUIRE_MESSAGE(run_to_end(args(run, newest + 2, true), {log}) == 0, slurp_text(log));
    newest = verify_checkpoints(run);
  }
  check_metrics_consecutive(run / "metrics.jsonl", newest);
  std::printf("disk-full test (no mount permission: RLIMIT_FSIZE below the checkpoint size): %d of %d runs stopped "
              "with EFBIG, every checkpoint intact, no temp file left, each resumed\n",
              failures, rounds);
}
