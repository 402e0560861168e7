// mira_linear: linear evaluation of a representation (spec §6; the recipe is in
// apps/common/linear_probe.h): a linear classifier on the frozen backbone, trained with
// RandomResizedCrop + flip views, or on cached features (--cached-features, or precomputed
// .npy features); the semi-supervised protocol with --train-fraction / --train-list and
// --backbone-lr (fine-tuning). Prints top-1 / top-5 per epoch and at the end.
#include <cstdio>
#include <sstream>

#include <nlohmann/json.hpp>

#include "apps/common/cli.h"
#include "apps/common/eval_data.h"
#include "apps/common/eval_transform.h"
#include "apps/common/features.h"
#include "apps/common/linear_probe.h"
#include "engine/safetensors.h"

using namespace mira;
using namespace mira::apps;

namespace {

// --l2-grid: the coefficients --transfer tries (non-negative, at least one).
std::vector<double> l2_grid(const ArgParser& p) {
  std::vector<double> grid;
  std::stringstream ss(p.str("l2-grid"));
  std::string item;
  while (std::getline(ss, item, ',')) {
    grid.push_back(parse_double(item, "--l2-grid"));
    MIRA_CHECK(grid.back() >= 0, "--l2-grid: coefficients must be >= 0, got ", grid.back());
  }
  MIRA_CHECK(!grid.empty(), "--l2-grid: no coefficient given");
  const double vf = p.number("val-fraction");
  MIRA_CHECK(vf > 0 && vf < 1, "--val-fraction must be in (0, 1), got ", vf);
  return grid;
}

// The cached-feature probe, or with --transfer (l2: its grid) the logistic-regression protocol.
LinearProbeResult probe_cached(const ArgParser& p, const std::vector<double>& l2, const Tensor& xtr,
                               const std::vector<int64_t>& ytr, const Tensor& xte, const std::vector<int64_t>& yte,
                               const LinearProbeConfig& cfg, Device device, std::string& mode, nlohmann::json& tj) {
  if (!p.flag_set("transfer")) return linear_probe_features(xtr, ytr, xte, yte, cfg, device);
  TransferResult t = transfer_logreg(xtr, ytr, xte, yte, l2, p.number("val-fraction"), cfg, device);
  mode += ", transfer";
  tj["best_l2"] = t.best_l2;
  tj["held_out"] = nlohmann::json::array();
  for (const auto& [l2, acc] : t.val_top1) tj["held_out"].push_back({{"l2", l2}, {"top1", acc}});
  return t.final_fit;
}

int run(int argc, char** argv) {
  ArgParser p("mira_linear", "Linear probe (frozen backbone) or fine-tuning; top-1 / top-5 on the test set.");
  add_backbone_args(p);
  add_transform_args(p);
  add_split_args(p);  // precomputed --train-features imply a cached probe
  p.flag("cached-features", "fast probe: features computed once with the eval transform, no augmentation")
      .option("epochs", "epochs", "100")
      .option("batch", "batch size", "1024")
      .option("lr", "classifier lr per 256 images (lr = LR * batch / 256; spec: 0.075, i.e. 0.3 at 1024)", "0.075")
      .option("backbone-lr", "fine-tune the backbone with this lr per 256 images (0: frozen)", "0")
      .option("optimizer", "sgd | lars", "sgd")
      .option("lars-eta", "LARS trust coefficient", "0.001")
      .option("momentum", "momentum", "0.9")
      .option("weight-decay", "weight decay", "0")
      .option("num-classes", "number of classes (0: 1 + the largest label)", "0")
      .option("train-fraction", "labelled subset: this fraction of every class", "1")
      .option("subset-seed", "seed of --train-fraction", "0")
      .option("train-list", "labelled subset: file of train indices or ImageFolder file names")
      .option("probe-seed", "seed of the classifier init and the shuffling", "0")
      .option("eval-every", "epochs between test evaluations", "1")
      .flag("transfer",
            "transfer protocol on cached features: L2-regularised logistic regression, coefficient "
            "chosen on a held-out part of the train split, then refit on all of it")
      .option("l2-grid", "--transfer: L2 coefficients to try", "0,1e-6,1e-5,1e-4,1e-3,1e-2")
      .option("val-fraction", "--transfer: held-out fraction of the train split", "0.2")
      .option("device", "auto | cpu | cuda | cuda:N", "auto")
      .option("save-classifier", "write the trained fc.weight / fc.bias as safetensors")
      .option("json", "write the results as JSON here");
  if (!p.parse(argc, argv)) return 0;
  const Device device = parse_device(p.str("device"));

  LinearProbeConfig cfg;
  cfg.epochs = static_cast<int>(p.integer("epochs"));
  cfg.batch = p.integer("batch");
  cfg.base_lr = p.number("lr");
  cfg.backbone_base_lr = p.number("backbone-lr");
  cfg.optimizer = p.str("optimizer");
  cfg.momentum = p.number("momentum");
  cfg.lars_eta = p.number("lars-eta");
  cfg.weight_decay = p.number("weight-decay");
  cfg.num_classes = static_cast<int>(p.integer("num-classes"));
  cfg.seed = static_cast<uint64_t>(p.integer("probe-seed"));
  cfg.eval_every = static_cast<int>(p.integer("eval-every"));
  // Settings and output paths before any feature is computed.
  check_linear_probe_config(cfg);
  for (const char* out : {"json", "save-classifier"})
    if (p.has(out)) check_output_path(std::string("--") + out, p.str(out));
  const std::vector<double> l2 = p.flag_set("transfer") ? l2_grid(p) : std::vector<double>{};

  const bool from_npy = p.has("train-features") || p.has("test-features");
  const double fraction = p.number("train-fraction");
  const std::string list = p.has("train-list") ? p.str("train-list") : "";
  std::string mode, arch;
  nlohmann::json transfer_json;
  LinearProbeResult r;
  int64_t n_train = 0, n_test = 0;
  if (from_npy) {
    NpySplits npy = read_npy_splits(p);
    MIRA_CHECK(!p.has("train-data") && !p.has("checkpoint") && !p.flag_set("random-init"),
               "give either precomputed features or datasets, not both");
    MIRA_CHECK(cfg.backbone_base_lr == 0, "--backbone-lr needs a backbone, not precomputed features");
    Tensor xtr = npy.train, xte = npy.test;
    std::vector<int64_t> ytr = std::move(npy.train_labels), yte = std::move(npy.test_labels);
    const std::vector<int64_t> sub = select_subset(ytr, fraction, p.integer("subset-seed"), list);
    if (sub.size() != ytr.size()) {
      xtr = take_rows(xtr, sub);
      ytr = take(ytr, sub);
    }
    n_train = xtr.dim(0);
    n_test = xte.dim(0);
    mode = "cached (npy)";
    r = probe_cached(p, l2, xtr, ytr, xte, yte, cfg, device, mode, transfer_json);
  } else {
    MIRA_CHECK(p.has("train-data") && p.has("test-data"),
               "give --train-data and --test-data (or precomputed "
               "--train-features ... .npy)");
    auto train = open_split(p.str("train-data"), p.str("data-format"), data::Split::Train, "--train-data");
    auto test = open_split(p.str("test-data"), p.str("data-format"), data::Split::Test, "--test-data");
    const EvalTransform t = transform_args(p, *train);
    std::fprintf(stderr, "eval transform: %s\n", t.str().c_str());
    int oh = 224, ow = 224;
    if (train->in_memory()) t.out_size(train->height(), train->width(), oh, ow);
    auto net = open_backbone(backbone_args(p, device), std::max(oh, ow));
    arch = describe(net->config());
    const std::vector<int64_t> ytr_all = dataset_labels(*train);
    const std::vector<int64_t> sub = select_subset(ytr_all, fraction, p.integer("subset-seed"), list, train.get());
    n_train = static_cast<int64_t>(sub.size());
    n_test = test->size();
    if (p.flag_set("cached-features")) {
      MIRA_CHECK(cfg.backbone_base_lr == 0, "--backbone-lr fine-tunes the backbone: not with --cached-features");
      mode = "cached";
      Tensor xtr = take_rows(extract_features(*net, *train, t, 256, "train features"), sub);
      Tensor xte = extract_features(*net, *test, t, 256, "test features");
      r = probe_cached(p, l2, xtr, take(ytr_all, sub), xte, dataset_labels(*test), cfg, device, mode, transfer_json);
    } else {
      MIRA_CHECK(!p.flag_set("transfer"), "--transfer runs on cached features: add --cached-features");
      mode = cfg.backbone_base_lr > 0 ? "fine-tune" : "augmented";
      r = linear_probe_images(*net, *train, sub, *test, t, cfg);
    }
  }
  std::printf("linear (%s, %lld train, %lld test): top1 %.2f top5 %.2f\n", mode.c_str(),
              static_cast<long long>(n_train), static_cast<long long>(n_test), r.top1, r.top5);

  if (p.has("save-classifier"))
    save_safetensors(p.str("save-classifier"), {{"fc.weight", r.weight}, {"fc.bias", r.bias}});
  if (p.has("json")) {
    nlohmann::json j;
    j["protocol"] = "linear";
    j["mode"] = mode;
    if (p.has("checkpoint")) j["checkpoint"] = p.str("checkpoint");
    if (!arch.empty()) j["arch"] = arch;
    j["n_train"] = n_train;
    j["n_test"] = n_test;
    j["train_fraction"] = fraction;
    j["epochs"] = cfg.epochs;
    j["batch"] = cfg.batch;
    j["lr"] = cfg.base_lr * cfg.batch / 256.0;
    j["backbone_lr"] = cfg.backbone_base_lr * cfg.batch / 256.0;
    j["optimizer"] = cfg.optimizer;
    if (!transfer_json.is_null()) j["transfer"] = transfer_json;
    j["top1"] = r.top1;
    j["top5"] = r.top5;
    j["per_epoch"] = nlohmann::json::array();
    for (const EpochLog& e : r.epochs) {
      nlohmann::json o = {{"epoch", e.epoch + 1}, {"loss", e.loss}, {"lr", e.lr}};
      if (e.top1 >= 0) {
        o["top1"] = e.top1;
        o["top5"] = e.top5;
      }
      j["per_epoch"].push_back(o);
    }
    write_output_file("--json", p.str("json"), j.dump(2) + "\n");
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return run_main([&] { return run(argc, argv); });
}
