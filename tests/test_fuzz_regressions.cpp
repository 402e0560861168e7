// labels: cpu
// Replays every committed fuzz input (fuzz/corpus/<parser>/: seeds from real files;
// fuzz/regressions/<parser>/: inputs that once crashed a parser or that pin an edge case)
// through the same entry points the libFuzzer harnesses use (fuzz/targets.h). Each must be
// accepted or rejected with mira::Error; any other exception fails the test, and in the
// sanitizer build (tools/sanitize.sh) an out-of-bounds access or UB fails it too.
// A regression input may carry an expectation in its file name: "*.reject.*" must be rejected
// with mira::Error, "*.accept.*" must load.
#include <filesystem>
#include <fstream>
#include <iterator>

#include "fuzz/targets.h"
#include "testing.h"

namespace fs = std::filesystem;

namespace {

std::vector<uint8_t> slurp(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  return std::vector<uint8_t>((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

std::vector<fs::path> files_under(const fs::path& dir) {
  std::vector<fs::path> out;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return out;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.is_regular_file() && e.path().filename().string()[0] != '.') out.push_back(e.path());
  std::sort(out.begin(), out.end());
  return out;
}

// Returns the number of inputs replayed.
int replay(const std::string& kind) {
  int n = 0;
  for (const mira::fuzz::Target& t : mira::fuzz::all_targets()) {
    for (const fs::path& p : files_under(fs::path(MIRA_SOURCE_DIR) / "fuzz" / kind / t.name)) {
      const std::vector<uint8_t> bytes = slurp(p);
      const std::string name = p.filename().string();
      CAPTURE(p.string());
      bool accepted = false;
      std::string why;
      try {
        accepted = mira::fuzz::run_target(t.fn, bytes.data(), bytes.size(), &why);
      } catch (const std::exception& e) {
        FAIL_CHECK(t.name << " input " << p.string() << " escaped as a non-mira::Error exception: " << e.what());
        continue;
      }
      if (name.find(".reject.") != std::string::npos) CHECK_MESSAGE(!accepted, name << " should be rejected");
      if (name.find(".accept.") != std::string::npos) CHECK_MESSAGE(accepted, name << " should load: " << why);
      ++n;
    }
  }
  return n;
}

}  // namespace

TEST_CASE("fuzz seed corpora: every input is accepted or cleanly rejected") {
  const int n = replay("corpus");
  MESSAGE(n << " corpus inputs replayed");
  CHECK(n >= 40);
}

TEST_CASE("fuzz regressions: every input is accepted or cleanly rejected") {
  const int n = replay("regressions");
  MESSAGE(n << " regression inputs replayed");
  CHECK(n >= 1);
}

TEST_CASE("real seed files load (the corpus exercises the parsers, not only their error paths)") {
  const fs::path c = fs::path(MIRA_SOURCE_DIR) / "fuzz/corpus";
  struct Expect {
    const char* parser;
    const char* file;
  };
  for (const Expect& e : {Expect{"safetensors", "tiny_model_checkpoint.safetensors"},
                          Expect{"safetensors", "all_dtypes.safetensors"}, Expect{"npy", "f32_3x4.npy"},
                          Expect{"npy", "v3_f32.npy"}, Expect{"idx", "fmnist_t10k_3_gzip.idx"},
                          Expect{"cifar", "cifar10_2rec.bin"}, Expect{"jpeg", "progressive_crop.jpg"},
                          Expect{"jpeg", "arithmetic_crop.jpg"}, Expect{"config", "fashion_mnist_tiny.json"},
                          Expect{"config", "comments_and_sets.cfg"}}) {
    CAPTURE(e.file);
    mira::fuzz::TargetFn fn = nullptr;
    for (const auto& t : mira::fuzz::all_targets())
      if (std::string(t.name) == e.parser) fn = t.fn;
    REQUIRE(static_cast<bool>(fn));
    const std::vector<uint8_t> bytes = slurp(c / e.parser / e.file);
    REQUIRE(!bytes.empty());
    std::string why;
    CHECK_MESSAGE(mira::fuzz::run_target(fn, bytes.data(), bytes.size(), &why), why);
  }
}
