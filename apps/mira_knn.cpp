// mira_knn: weighted k-NN evaluation of a representation (DINO's protocol, spec §6; the rules
// are in apps/common/knn.h). Features come from a checkpoint's backbone on two datasets, from
// precomputed .npy arrays, or from a baseline: raw pixels (--features pixels) or the
// architecture at its seeded initialisation (--random-init).
#include <algorithm>
#include <climits>
#include <cstdio>
#include <sstream>

#include <nlohmann/json.hpp>

#include "apps/common/cli.h"
#include "apps/common/eval_data.h"
#include "apps/common/eval_transform.h"
#include "apps/common/features.h"
#include "apps/common/knn.h"
#include "engine/npy.h"

using namespace mira;
using namespace mira::apps;

namespace {

int run(int argc, char** argv) {
  ArgParser p("mira_knn", "Weighted k-NN accuracy (cosine similarity, weights exp(sim / T)), top-1 and top-5.");
  p.option("features", "backbone (a checkpoint, or --random-init) or pixels (normalised raw pixels)", "backbone")
      .option("pixel-norm",
              "--features pixels: dataset (per-channel train mean/std, 4 decimals), none (u8 / 255), "
              "or MEAN,STD (one pair per channel: M1,M2,M3,S1,S2,S3)",
              "dataset");
  add_backbone_args(p);
  add_transform_args(p);
  add_split_args(p);
  p.option("k", "neighbour counts, comma separated", "20")
      .option("temperature", "vote weight exp(sim / T)", "0.07")
      .option("num-classes", "number of classes (0: 1 + the largest label)", "0")
      .option("train-fraction", "labelled subset of the train set: this fraction of every class", "1")
      .option("subset-seed", "seed of --train-fraction", "0")
      .option("train-list", "labelled subset: file of train indices or ImageFolder file names")
      .option("batch", "feature extraction batch size", "256")
      .option("device", "auto | cpu | cuda | cuda:N", "auto")
      .option("precision", "f32, or f64 (CPU only: the reference path)", "f32")
      .option("test-block", "test rows per similarity tile (0: from a 512 MiB budget)", "0")
      .option("train-chunk", "train rows per similarity tile (0: up to 131072)", "0")
      .option("save-features", "prefix: write PREFIX_{train,test}_{features,labels}.npy")
      .option("predictions-out", "top-1 predictions (N) .npy for the first k")
      .option("json", "write the results as JSON here");
  if (!p.parse(argc, argv)) return 0;

  const Device device = parse_device(p.str("device"));
  const std::string precision = p.str("precision");
  MIRA_CHECK(precision == "f32" || precision == "f64", "--precision must be f32 or f64");
  MIRA_CHECK(precision == "f32" || device.is_cpu(), "--precision f64 runs on the CPU only (use --device cpu)");
  const DType dt = precision == "f64" ? DType::F64 : DType::F32;
  const std::string mode = p.str("features");
  MIRA_CHECK(mode == "backbone" || mode == "pixels", "--features must be backbone or pixels, not '", mode, "'");
  // The vote's settings and the output paths before any feature is computed (minutes to hours
  // on a large dataset).
  KnnConfig cfg;
  cfg.ks.clear();
  for (int64_t k : p.integers("k")) {
    MIRA_CHECK(k >= 1 && k <= INT32_MAX, "--k: each k must be a positive integer, got ", k);
    cfg.ks.push_back(static_cast<int>(k));
  }
  cfg.temperature = p.number("temperature");
  cfg.num_classes = static_cast<int>(p.integer("num-classes"));
  cfg.test_block = p.integer("test-block");
  cfg.train_chunk = p.integer("train-chunk");
  check_knn_config(cfg);
  for (const char* out : {"json", "predictions-out"})
    if (p.has(out)) check_output_path(std::string("--") + out, p.str(out));
  if (p.has("save-features")) check_output_path("--save-features", p.str("save-features") + "_train_features.npy");

  const bool from_npy = p.has("train-features") || p.has("test-features");
  Tensor train, test;
  std::vector<int64_t> ytr, yte;
  std::unique_ptr<data::Dataset> train_ds;
  std::string source, arch;
  if (from_npy) {
    NpySplits npy = read_npy_splits(p);
    MIRA_CHECK(!p.has("train-data") && !p.has("test-data") && !p.has("checkpoint") && !p.flag_set("random-init"),
               "give either precomputed features or datasets, not both");
    train = npy.train;
    test = npy.test;
    ytr = std::move(npy.train_labels);
    yte = std::move(npy.test_labels);
    source = "npy";
  } else {
    MIRA_CHECK(p.has("train-data") && p.has("test-data"),
               "give --train-data and --test-data (or precomputed "
               "--train-features ... .npy)");
    train_ds = open_split(p.str("train-data"), p.str("data-format"), data::Split::Train, "--train-data");
    auto test_ds = open_split(p.str("test-data"), p.str("data-format"), data::Split::Test, "--test-data");
    ytr = dataset_labels(*train_ds);
    yte = dataset_labels(*test_ds);
    const int kmax = *std::max_element(cfg.ks.begin(), cfg.ks.end());
    MIRA_CHECK(kmax <= static_cast<int64_t>(ytr.size()), "--k: k = ", kmax, " but --train-data has only ", ytr.size(),
               " images");
    if (mode == "pixels") {
      MIRA_CHECK(!p.has("checkpoint") && !p.flag_set("random-init"), "--features pixels takes no backbone");
      std::vector<double> mean, sd;
      const std::string norm = p.str("pixel-norm");
      if (norm == "dataset") {
        pixel_mean_std(*train_ds, mean, sd);
      } else if (norm != "none") {
        std::vector<double> v;
        std::stringstream ss(norm);
        std::string item;
        while (std::getline(ss, item, ',')) v.push_back(parse_double(item, "--pixel-norm"));
        MIRA_CHECK(v.size() == 2 * static_cast<size_t>(train_ds->channels()), "--pixel-norm: ", v.size(),
                   " values for ", train_ds->channels(), " channel(s)");
        mean.assign(v.begin(), v.begin() + v.size() / 2);
        sd.assign(v.begin() + v.size() / 2, v.end());
      }
      std::string desc = "pixel normalisation:";
      for (size_t c = 0; c < mean.size(); ++c)
        desc += " (x - " + std::to_string(mean[c]) + ") / " + std::to_string(sd[c]);
      std::fprintf(stderr, "%s\n", mean.empty() ? "pixel features: u8 / 255, no normalisation" : desc.c_str());
      train = pixel_features(*train_ds, mean, sd, dt);
      test = pixel_features(*test_ds, mean, sd, dt);
      source = "pixels";
    } else {
      const BackboneOptions bo = backbone_args(p, device);
      const EvalTransform t = transform_args(p, *train_ds);
      std::fprintf(stderr, "eval transform: %s\n", t.str().c_str());
      int oh = 224, ow = 224;
      if (train_ds->in_memory()) t.out_size(train_ds->height(), train_ds->width(), oh, ow);
      auto net = open_backbone(bo, std::max(oh, ow));
      arch = describe(net->config());
      const int64_t batch = p.integer("batch");
      train = extract_features(*net, *train_ds, t, batch, "train features");
      test = extract_features(*net, *test_ds, t, batch, "test features");
      source = bo.random_init ? "random-init" : "checkpoint";
    }
  }

  std::vector<int64_t> subset =
      select_subset(ytr, p.number("train-fraction"), static_cast<uint64_t>(p.integer("subset-seed")),
                    p.has("train-list") ? p.str("train-list") : "", train_ds.get());
  if (static_cast<int64_t>(subset.size()) != static_cast<int64_t>(ytr.size())) {
    train = take_rows(train, subset);
    ytr = take(ytr, subset);
    std::fprintf(stderr, "labelled subset: %zu train samples\n", subset.size());
  }
  if (p.has("save-features")) {
    const std::string pre = p.str("save-features");
    npy_write_tensor(pre + "_train_features.npy", train);
    npy_write_tensor(pre + "_test_features.npy", test);
    write_labels_npy(pre + "_train_labels.npy", ytr);
    write_labels_npy(pre + "_test_labels.npy", yte);
  }

  if (train.dtype() != dt) train = train.to(dt);
  if (test.dtype() != dt) test = test.to(dt);
  if (device.is_cuda()) {
    train = train.to(device);
    test = test.to(device);
  }
  const KnnResult r = knn_classify(train, ytr, test, yte, cfg);
  std::printf("k-NN (%s features, T = %g, %lld train, %lld test, %d classes)\n%s", source.c_str(), cfg.temperature,
              static_cast<long long>(r.n_train), static_cast<long long>(r.n_test), r.num_classes,
              knn_summary(r).c_str());

  if (p.has("predictions-out")) {
    std::vector<int64_t> pred(r.predicted[0].begin(), r.predicted[0].end());
    write_labels_npy(p.str("predictions-out"), pred);
  }
  if (p.has("json")) {
    nlohmann::json j;
    j["protocol"] = "knn";
    j["features"] = source;
    if (p.has("checkpoint")) j["checkpoint"] = p.str("checkpoint");
    if (!arch.empty()) j["arch"] = arch;
    j["temperature"] = cfg.temperature;
    j["n_train"] = r.n_train;
    j["n_test"] = r.n_test;
    j["num_classes"] = r.num_classes;
    j["train_fraction"] = p.number("train-fraction");
    j["device"] = device.str();
    j["precision"] = precision;
    j["results"] = nlohmann::json::array();
    for (const KnnScore& s : r.scores) j["results"].push_back({{"k", s.k}, {"top1", s.top1}, {"top5", s.top5}});
    write_output_file("--json", p.str("json"), j.dump(2) + "\n");
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return run_main([&] { return run(argc, argv); });
}
