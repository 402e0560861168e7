#include "apps/pretrain/pretrain_config.h"

#include <cmath>
#include <cstdint>

#include "data/jpeg.h"
#include "engine/error.h"

namespace mira::apps {

const Json& pretrain_schema() {
  static const Json schema = Json::parse(R"({
    "model": {
      "arch": "resnet50",
      "widths": [], "blocks": [],
      "cifar_stem": false, "cifar_stem_padding": 1,
      "zero_init_residual": true,
      "proj_hidden": 2048, "proj_out": 256, "prototypes": 3000
    },
    "data": {
      "path": "", "format": "auto", "train_subset": 0,
      "recipe": "imagenet", "local_crops": -1, "interp": "", "mean": [], "std": [],
      "threads": 0, "prefetch": 3, "max_image_pixels": 178956970, "augment_device": "auto"
    },
    "optim": {
      "name": "lars", "lr": 0.3, "scale_lr_by_batch": true,
      "warmup_epochs": 10.0, "warmup_start_lr": 0.0, "min_lr": 0.0,
      "weight_decay": 1e-6, "momentum": 0.9, "eta": 0.001
    },
    "mira": {
      "tau_s": 0.1, "tau_t": 0.225, "iters": 30,
      "beta_initial": 0.7, "beta_final": 0.6666666666666666,
      "ema_initial": 0.99, "ema_final": 1.0,
      "freeze_prototypes_epochs": 1,
      "working_copy": "f32", "exact_passes": 0, "assign_plan": "auto"
    },
    "train": {
      "epochs": 100, "batch_size": 4096, "seed": 0, "device": "cpu",
      "checkpoint_every": 500, "keep_every": 0, "log_every": 10, "max_steps": 0,
      "comm_timeout_s": 600.0, "dtype": "f32", "group_crops": true
    },
    "eval": {"test_data": "", "knn_k": 20, "knn_t": 0.07, "bank_fraction": 1.0, "baselines": true,
             "batch_size": 256}
  })");
  return schema;
}

namespace {
void require(bool ok, const char* key, const std::string& what) {
  MIRA_CHECK(ok, "configuration: '", key, "' ", what);
}
}  // namespace

void validate_pretrain_config(const Json& c) {
  const std::string arch = c["model"]["arch"];
  require(arch == "resnet18" || arch == "resnet50" || arch == "resnet_tiny", "model.arch",
          "must be resnet18, resnet50 or resnet_tiny, got " + arch);
  require(c["model"]["widths"].size() == c["model"]["blocks"].size(), "model.widths",
          "and model.blocks must have the same length");
  // Each element is read as an int: check the kind and range here (a string would be a JSON
  // type error, 1e300 undefined behaviour, a zero or negative width a bad allocation).
  for (const char* key : {"widths", "blocks"})
    for (const Json& v : c["model"][key])
      require(v.is_number_integer() && v >= 1 && v <= 65536, key[0] == 'w' ? "model.widths" : "model.blocks",
              "must hold integers in [1, 65536], got " + v.dump());
  require(c["model"]["prototypes"] >= 1, "model.prototypes", "must be >= 1");
  require(c["model"]["proj_hidden"] >= 1 && c["model"]["proj_out"] >= 1, "model.proj_hidden", "and proj_out must be >= 1");
  const int pad = c["model"]["cifar_stem_padding"];
  require(pad == 1 || pad == 2, "model.cifar_stem_padding", "must be 1 or 2");
  require(c["train"]["epochs"] >= 1, "train.epochs", "must be >= 1");
  // Upper bounds keep the products mira_pretrain forms (epochs x steps per epoch, keep_every x
  // checkpoint_every, batch x crop pixels) inside int64.
  require(c["train"]["epochs"] <= 1000000, "train.epochs", "must be <= 1000000");
  require(c["train"]["batch_size"] <= (1 << 24), "train.batch_size", "must be <= 16777216");
  require(c["train"]["checkpoint_every"] <= 1000000000 && c["train"]["keep_every"] <= 1000000000,
          "train.checkpoint_every", "and train.keep_every must be <= 1e9");
  require(c["train"]["batch_size"] >= 2, "train.batch_size", "must be >= 2 (BatchNorm needs two samples)");
  require(c["train"]["checkpoint_every"] >= 0 && c["train"]["keep_every"] >= 0, "train.checkpoint_every",
          "and train.keep_every must be >= 0");
  require(c["train"]["log_every"] >= 1, "train.log_every", "must be >= 1");
  require(c["train"]["max_steps"] >= 0, "train.max_steps", "must be >= 0");
  require(c["train"]["comm_timeout_s"] > 0, "train.comm_timeout_s", "must be > 0");
  const std::string dt = c["train"]["dtype"];
  require(dt == "f32" || dt == "f64" || dt == "bf16", "train.dtype",
          "must be f32, bf16 (CUDA: f32 parameters, bf16 backbone and projector) or f64 (CPU reference runs), got " +
              dt);
  require(c["data"]["train_subset"] >= 0, "data.train_subset", "must be >= 0");
  require(c["data"]["mean"].size() == 0 || c["data"]["mean"].size() == 3, "data.mean", "must have 3 values");
  require(c["data"]["std"].size() == 0 || c["data"]["std"].size() == 3, "data.std", "must have 3 values");
  require(c["data"]["mean"].size() == c["data"]["std"].size(), "data.mean",
          "and data.std must be given together (3 values each) or both left empty (the recipe's)");
  // Pixels are in [0, 1]; a zero std would turn every pixel into Inf / NaN.
  for (const Json& v : c["data"]["mean"])
    require(v.is_number() && std::fabs(v.get<double>()) <= 1e6, "data.mean",
            "must hold numbers in [-1e6, 1e6], got " + v.dump());
  for (const Json& v : c["data"]["std"])
    require(v.is_number() && v.get<double>() >= 1e-6 && v.get<double>() <= 1e6, "data.std",
            "must hold numbers in [1e-6, 1e6], got " + v.dump());
  const std::string interp = c["data"]["interp"];
  require(interp.empty() || interp == "bilinear" || interp == "bicubic", "data.interp",
          "must be bilinear or bicubic, got " + interp);
  const std::string opt = c["optim"]["name"];
  require(opt == "sgd" || opt == "lars", "optim.name", "must be sgd or lars, got " + opt);
  require(c["optim"]["lr"] > 0, "optim.lr", "must be > 0");
  require(c["optim"]["warmup_epochs"] >= 0, "optim.warmup_epochs", "must be >= 0");
  require(c["optim"]["weight_decay"] >= 0, "optim.weight_decay", "must be >= 0");
  require(c["optim"]["momentum"] >= 0 && c["optim"]["momentum"] < 1, "optim.momentum", "must be in [0, 1)");
  const double bi = c["mira"]["beta_initial"], bf = c["mira"]["beta_final"];
  require(bi >= 0 && bi < 1, "mira.beta_initial", "must be in [0, 1)");
  require(bf >= 0 && bf < 1, "mira.beta_final", "must be in [0, 1)");
  require(c["mira"]["tau_s"] > 0 && c["mira"]["tau_t"] > 0, "mira.tau_s", "and mira.tau_t must be > 0");
  require(c["mira"]["iters"] >= 0, "mira.iters", "must be >= 0");
  const std::string wc = c["mira"]["working_copy"];
  require(wc == "f32" || wc == "bf16" || wc == "f16", "mira.working_copy", "must be f32, bf16 or f16, got " + wc);
  require(c["mira"]["exact_passes"].is_number_integer() && c["mira"]["exact_passes"] >= 0 &&
              c["mira"]["exact_passes"] <= 1000000,
          "mira.exact_passes", "must be an integer in [0, 1000000]");
  const std::string plan = c["mira"]["assign_plan"];
  require(plan == "auto" || plan == "cluster" || plan == "cluster-mma" || plan == "mma-rows", "mira.assign_plan",
          "must be auto, cluster, cluster-mma or mma-rows, got " + plan);
  require(plan != "cluster-mma" || wc == "f16", "mira.assign_plan",
          "cluster-mma sweeps the f16 working copy on tensor cores: set mira.working_copy to f16");
  require(plan != "mma-rows" || (wc == "f16" && c["mira"]["exact_passes"] == 0), "mira.assign_plan",
          "mma-rows updates the f16 working copy on tensor cores: set mira.working_copy to f16 and "
          "mira.exact_passes to 0");
  const std::string aug = c["data"]["augment_device"];
  require(aug == "auto" || aug == "cpu" || aug == "gpu", "data.augment_device", "must be auto, cpu or gpu, got " + aug);
  require(c["data"]["max_image_pixels"].is_number_integer() && c["data"]["max_image_pixels"] >= 1 &&
              c["data"]["max_image_pixels"] <= data::kMaxImagePixels,
          "data.max_image_pixels", "must be an integer in [1, 268435456]");
  const double ei = c["mira"]["ema_initial"], ef = c["mira"]["ema_final"];
  require(ei >= 0 && ei <= 1 && ef >= 0 && ef <= 1, "mira.ema_initial", "and mira.ema_final must be in [0, 1]");
  require(c["mira"]["freeze_prototypes_epochs"] >= 0, "mira.freeze_prototypes_epochs", "must be >= 0");
  require(c["eval"]["knn_k"] >= 1 && c["eval"]["knn_t"] > 0, "eval.knn_k", "must be >= 1 and eval.knn_t > 0");
  const double bank = c["eval"]["bank_fraction"];
  require(bank > 0 && bank <= 1, "eval.bank_fraction", "must be in (0, 1]");
  require(c["eval"]["batch_size"] >= 1, "eval.batch_size", "must be >= 1");
}

bool rank_local_key(const std::string& section, const std::string& key) {
  if (section == "data") return key == "path" || key == "threads" || key == "prefetch";
  if (section == "train") return key == "comm_timeout_s" || key == "max_steps";
  return false;
}

std::vector<std::pair<std::string, double>> config_digests(const Json& cfg) {
  std::vector<std::pair<std::string, double>> out;
  for (auto sec = cfg.begin(); sec != cfg.end(); ++sec) {
    Json kept = sec.value();
    if (kept.is_object())
      for (auto it = sec.value().begin(); it != sec.value().end(); ++it)
        if (rank_local_key(sec.key(), it.key())) kept.erase(it.key());
    // FNV-1a over the section's JSON text (keys in order: nlohmann::json sorts them).
    uint64_t h = 1469598103934665603ull;
    for (const unsigned char ch : kept.dump()) h = (h ^ ch) * 1099511628211ull;
    out.emplace_back(sec.key(), static_cast<double>(h & ((uint64_t(1) << 52) - 1)));
  }
  return out;
}

}  // namespace mira::apps
