// labels: gpu
// mira_pretrain end to end on the GPU, on a small synthetic IDX dataset: f32 with the GPU loader
// (the dataset resident on the device, augmentation by the CUDA kernels), f32 with CPU
// augmentation uploaded from pinned memory, and bf16 mixed precision. Each run must finish,
// log finite losses that fall, and write a checkpoint the CPU reads back with finite tensors;
// the first step's loss of the f32 GPU run must match the CPU run's (same seed, same
// decisions; cuDNN's summation order and the GPU augmentation's 2e-4 are the only differences).
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "engine/config.h"
#include "engine/safetensors.h"
#include "testing.h"

using namespace mira;
namespace fs = std::filesystem;

namespace {

const std::string kApp = std::string(MIRA_BINARY_DIR) + "/apps/mira_pretrain";

struct Sandbox : mira::testing::SyntheticRunDir {
  Sandbox() : SyntheticRunDir("mira_pretrain_gpu_test", 256) {}
  // Runs mira_pretrain for 8 steps; returns the exit status (the log is in RUN/log.txt).
  int run(const std::string& name, const std::string& extra) const {
    const fs::path out = dir / name;
    fs::create_directories(out);
    const std::string c = kApp + " --config " + std::string(MIRA_SOURCE_DIR) + "/configs/fashion_mnist_tiny.json" +
                          " --data " + (dir / "data").string() + " --out " + out.string() +
                          " --set data.train_subset=0 --set train.batch_size=64 --set train.epochs=2" +
                          " --set train.max_steps=8 --set train.log_every=1 --set eval.test_data=\"\" " + extra +
                          " > " + (out / "log.txt").string() + " 2>&1";
    const int rc = std::system(c.c_str());
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
  }
  std::vector<double> losses(const std::string& name) const {
    std::vector<double> out;
    std::ifstream m(dir / name / "metrics.jsonl");
    for (std::string line; std::getline(m, line);) out.push_back(Json::parse(line)["loss"].get<double>());
    return out;
  }
  std::string log(const std::string& name) const {
    std::ifstream f(dir / name / "log.txt");
    return std::string(std::istreambuf_iterator<char>(f), {});
  }
  void check_run(const std::string& name) const {
    const std::vector<double> l = losses(name);
    REQUIRE_MESSAGE(l.size() == 8, name << ": " << log(name));
    for (double x : l) CHECK_MESSAGE(std::isfinite(x), name);
    CHECK_MESSAGE(l.back() < l.front(), name << ": loss " << l.front() << " -> " << l.back());
    const fs::path ckpt = dir / name / "checkpoints" / "step_000000008.safetensors";
    REQUIRE_MESSAGE(fs::exists(ckpt), name << ": no checkpoint; " << log(name));
    for (auto& [k, t] : load_safetensors(ckpt.string()).tensors)
      for (double v : t.to_vector()) REQUIRE_MESSAGE(std::isfinite(v), name << ": " << k);
  }
};

}  // namespace

TEST_CASE("mira_pretrain on the GPU: GPU loader, CPU augmentation, bf16; first loss equals the CPU run's") {
  Sandbox sb;
  REQUIRE_MESSAGE(sb.run("gpu_f32", "--device cuda") == 0, sb.log("gpu_f32"));
  sb.check_run("gpu_f32");
  REQUIRE_MESSAGE(sb.run("gpu_cpuaug", "--device cuda --set data.augment_device=cpu") == 0, sb.log("gpu_cpuaug"));
  sb.check_run("gpu_cpuaug");
  REQUIRE_MESSAGE(sb.run("gpu_bf16", "--device cuda --set train.dtype=bf16") == 0, sb.log("gpu_bf16"));
  sb.check_run("gpu_bf16");
  REQUIRE_MESSAGE(sb.run("cpu", "--device cpu") == 0, sb.log("cpu"));
  const double cpu = sb.losses("cpu").front(), gpu = sb.losses("gpu_f32").front(),
               cpuaug = sb.losses("gpu_cpuaug").front(), bf16 = sb.losses("gpu_bf16").front();
  CHECK_MESSAGE(std::fabs(gpu - cpu) < 1e-3 * std::fabs(cpu), "first loss: GPU " << gpu << ", CPU " << cpu);
  CHECK_MESSAGE(std::fabs(cpuaug - cpu) < 1e-3 * std::fabs(cpu), "first loss: GPU (CPU views) " << cpuaug);
  CHECK_MESSAGE(std::fabs(bf16 - cpu) < 2e-2 * std::fabs(cpu), "first loss: bf16 " << bf16 << ", CPU " << cpu);
}
