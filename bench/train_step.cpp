// bench/train_step: time of one MIRA training step (EMA update, teacher on the global crops,
// two assignments, student on every crop, loss, backward, optimiser) on fixed random crops,
// CPU or CUDA. The PyTorch counterpart is bench/pytorch_mira_step.py with the same arguments;
// run both on the same machine in the same session and compare img/s.
//
//   train_step [--arch resnet_tiny|resnet18|resnet50] [--batch 128] [--global-size 32]
//              [--local-crops 0] [--local-size 16] [--steps 20] [--warmup 3] [--device cpu]
//              [--optim sgd|lars] [--proj-hidden 256] [--proj-out 64] [--prototypes 300]
//              [--cifar-stem 1] [--dtype f32|bf16] [--group-crops 0|1]
// Prints one JSON line.
#include <chrono>
#include <cstdio>

#include "apps/common/cli.h"
#include "engine/cuda_backend.h"
#include "engine/profile.h"
#include "kernels/cpu/parallel.h"
#include "models/mira_trainer.h"

using namespace mira;

int main(int argc, char** argv) {
  return apps::run_main([&] {
    apps::ArgParser a("train_step", "Time MIRA training steps on fixed random crops.");
    a.option("arch", "resnet_tiny | resnet18 | resnet50", "resnet_tiny")
        .option("batch", "crops per view", "128")
        .option("global-size", "side of the 2 global crops", "32")
        .option("local-crops", "number of local crops", "0")
        .option("local-size", "side of the local crops", "16")
        .option("steps", "timed steps", "20")
        .option("warmup", "untimed steps first", "3")
        .option("device", "cpu | cuda | cuda:N", "cpu")
        .option("optim", "sgd | lars", "sgd")
        .option("proj-hidden", "projector hidden width", "256")
        .option("proj-out", "projector output width", "64")
        .option("prototypes", "K", "300")
        .option("cifar-stem", "1: 3x3 stride-1 stem without max-pool", "1")
        .option("dtype", "f32 | bf16 (f32 parameters, bf16 backbone and projector; CUDA)", "f32")
        .option("group-crops", "1: crops of one size through one forward, BN statistics per crop (0: one forward per crop)", "1");
    if (!a.parse(argc, argv)) return 0;
    const Device dev = Device::parse(a.str("device"));
    if (dev.is_cuda()) cuda::set_device(dev.index);
    models::MiraModelConfig mc;
    mc.backbone = models::ResNetConfig::from_name(a.str("arch"));
    mc.backbone.cifar_stem = a.integer("cifar-stem") != 0;
    mc.head = models::HeadConfig{int(a.integer("proj-hidden")), int(a.integer("proj-out")),
                                 int(a.integer("prototypes"))};
    models::MiraModel model(mc, dev, DType::F32);
    model.init(0);
    const bool bf16 = a.str("dtype") == "bf16";
    MIRA_CHECK(bf16 || a.str("dtype") == "f32", "--dtype must be f32 or bf16");
    MIRA_CHECK(!bf16 || dev.is_cuda(), "--dtype bf16 needs --device cuda (the CPU kernels are f32 / f64)");
    if (bf16) model.set_compute_dtype(DType::BF16);
    models::MiraStepConfig sc{0.1, 0.225, 30};
    sc.group_crops = a.integer("group-crops") != 0;
    models::MiraTrainer trainer(model, OptimConfig{a.str("optim"), 0.9, 1e-4, 0.001}, sc, local_comm());
    const int64_t B = a.integer("batch"), G = a.integer("global-size"), L = a.integer("local-crops"),
                  S = a.integer("local-size");
    std::vector<Tensor> views;
    for (int v = 0; v < 2 + L; ++v) {
      const int64_t side = v < 2 ? G : S;
      views.push_back(Tensor::randn({B, side, side, 3}, 100 + v, 0, 1, DType::F32, dev).to(model.compute_dtype()));
    }
    const int warmup = int(a.integer("warmup")), steps = int(a.integer("steps"));
    models::MiraStepSchedule s{0.05, 0.7, 0.99, false};
    for (int i = 0; i < warmup; ++i) trainer.step(views, s, false);
    cuda::synchronize();
    prof::reset();  // MIRA_PROFILE=1: the timed steps only
    const auto t0 = std::chrono::steady_clock::now();
    double loss = 0;
    for (int i = 0; i < steps; ++i) loss = trainer.step(views, s, false).loss;
    cuda::synchronize();
    const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    prof::report(stderr, steps);
    std::printf(
        "{\"bench\": \"mira_train_step\", \"impl\": \"mira-engine\", \"arch\": \"%s\", \"device\": \"%s\", \"dtype\": "
        "\"%s\", "
        "\"batch\": %lld, \"global\": %lld, \"local_crops\": %lld, \"local_size\": %lld, \"steps\": %d, "
        "\"cpu_threads\": %d, \"ms_per_step\": %.2f, \"img_per_s\": %.1f, \"loss\": %.5f}\n",
        a.str("arch").c_str(), dev.str().c_str(), a.str("dtype").c_str(), static_cast<long long>(B),
        static_cast<long long>(G), static_cast<long long>(L), static_cast<long long>(S), steps,
        dev.is_cuda() ? 0 : cpu::parallel_workers(), 1e3 * sec / steps, B * steps / sec, loss);
    return 0;
  });
}
