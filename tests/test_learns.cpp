// labels: cpu
// The yardstick of the tiny preset on real data: configs/fashion_mnist_tiny.json (3 epochs
// over the first 10,000 Fashion-MNIST training images, CPU) must raise the k-NN accuracy of
// its EMA backbone clearly above the same network at its initialisation, without collapse.
// Bank: a class-balanced 20 % of the train split (12,000 images) to fit CI's time; test: the
// 10,000 test images; k = 20, T = 0.07. Needs Fashion-MNIST from Debian's archive; SKIPPED
// when it cannot be fetched.
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "engine/config.h"
#include "testing.h"

using namespace mira;
namespace fs = std::filesystem;

TEST_CASE("tiny preset on Fashion-MNIST: k-NN well above random init, no collapse") {
  const std::string src = MIRA_SOURCE_DIR, data = src + "/data_cache/fashion-mnist";
  const int fetch = std::system(("bash " + src + "/tools/fetch_fashion_mnist.sh " + data + " > /dev/null").c_str());
  if (!WIFEXITED(fetch) || WEXITSTATUS(fetch) != 0) {
    std::printf("SKIPPED: Fashion-MNIST could not be fetched from Debian's archive\n");
    std::exit(77);
  }
  const fs::path run = fs::temp_directory_path() / ("mira_learns_" + std::to_string(::getpid()));
  fs::remove_all(run);
  const std::string cmd = std::string(MIRA_BINARY_DIR) + "/apps/mira_pretrain --config " + src +
                          "/configs/fashion_mnist_tiny.json --data " + data + " --eval-data " + data +
                          " --out " + run.string() + " --set eval.bank_fraction=0.2 > " + (run.string() + ".log") +
                          " 2>&1";
  const int rc = std::system(cmd.c_str());
  REQUIRE_MESSAGE(WIFEXITED(rc), "mira_pretrain crashed");
  REQUIRE_MESSAGE(WEXITSTATUS(rc) == 0, "mira_pretrain failed, see " << run.string() << ".log");
  const Json knn = read_json_file((run / "knn.json").string());
  const double mira = knn["mira"]["top1"], rnd = knn["random_init"]["top1"], pixels = knn["pixels"]["top1"];
  MESSAGE("k-NN top-1: MIRA " << mira << " %, random init " << rnd << " %, raw pixels " << pixels << " %");
  // Measured with this 20 % bank: MIRA 64.1 vs random init 58.5 (+5.6); with the full bank
  // (docs/fashion_mnist.md): 68.0 vs 62.3, where the PyTorch implementation of the same setup
  // gives 66.7 vs 61.2. A margin of 3 points is far outside the run-to-run noise of a
  // fixed-seed run (none on one machine; a few tenths across BLAS builds).
  CHECK(mira >= rnd + 3.0);
  // No collapse: the last logged step still spreads its targets over many prototypes.
  std::ifstream m(run / "metrics.jsonl");
  Json last;
  for (std::string line; std::getline(m, line);) last = Json::parse(line);
  REQUIRE(last.contains("marginal_entropy"));
  CHECK(last["marginal_entropy"].get<double>() > 0.5 * std::log(300.0));
  CHECK(last["clusters_in_use"].get<int>() >= 30);
  fs::remove_all(run);
  fs::remove(run.string() + ".log");
}
