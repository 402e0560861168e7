// mira_features: pooled backbone features of a dataset (or of an .npy array of images that are
// already transformed and normalised), in eval mode with the evaluation transform, written as
// an (N, F) f32 .npy; labels optionally as an (N) i64 .npy.
#include <cstdio>

#include "apps/common/cli.h"
#include "apps/common/eval_data.h"
#include "apps/common/eval_transform.h"
#include "apps/common/features.h"
#include "engine/npy.h"

using namespace mira;
using namespace mira::apps;

namespace {

int run(int argc, char** argv) {
  ArgParser p("mira_features", "Extract pooled backbone features (eval mode, evaluation transform) to .npy.");
  add_backbone_args(p);
  add_transform_args(p);
  p.option("data", "IDX / CIFAR directory or ImageFolder tree")
      .option("split", "split of an IDX / CIFAR directory: train | test", "train")
      .option("data-format", "auto | idx | cifar10 | cifar100 | imagefolder", "auto")
      .option("npy", "(N, H, W, 3) f32 .npy of already transformed, normalised images, instead of --data")
      .option("out", "features (N, F) f32 .npy", "", true)
      .option("labels-out", "labels (N) i64 .npy (with --data)")
      .option("batch", "batch size", "256")
      .option("device", "auto | cpu | cuda | cuda:N", "auto");
  if (!p.parse(argc, argv)) return 0;
  MIRA_CHECK(p.has("data") != p.has("npy"), "give exactly one of --data and --npy");
  // The outputs before the features are computed (minutes to hours on a large dataset).
  check_output_path("--out", p.str("out"));
  if (p.has("labels-out")) check_output_path("--labels-out", p.str("labels-out"));
  const Device device = parse_device(p.str("device"));
  const BackboneOptions bo = backbone_args(p, device);
  const int64_t batch = p.integer("batch");
  Tensor feats;
  if (p.has("npy")) {
    MIRA_CHECK(!p.has("labels-out"), "--labels-out needs --data (an .npy of images has no labels)");
    const std::string path = p.str("npy");
    Tensor images = npy_read_tensor(path);
    MIRA_CHECK(images.ndim() == 4 && images.dim(3) == 3, "--npy '", path, "' holds ", images.shape().str(),
               ", expected (N, H, W, 3) NHWC images");
    if (images.dtype() != DType::F32) images = images.to(DType::F32);
    auto net = open_backbone(bo, static_cast<int>(std::max(images.dim(1), images.dim(2))));
    feats = extract_features(*net, images, batch, "features");
  } else {
    const std::string split = p.str("split");
    auto ds = open_split(p.str("data"), p.str("data-format"), data::parse_split(split), "--data");
    const EvalTransform t = transform_args(p, *ds);
    std::fprintf(stderr, "data: %s (%lld images, %d classes); eval transform: %s\n", ds->path().c_str(),
                 static_cast<long long>(ds->size()), ds->num_classes(), t.str().c_str());
    int oh = 224, ow = 224;
    if (ds->in_memory()) t.out_size(ds->height(), ds->width(), oh, ow);
    auto net = open_backbone(bo, std::max(oh, ow));
    feats = extract_features(*net, *ds, t, batch, "features");
    if (p.has("labels-out")) write_labels_npy(p.str("labels-out"), dataset_labels(*ds));
  }
  npy_write_tensor(p.str("out"), feats);
  std::printf("wrote %s: %s\n", p.str("out").c_str(), feats.shape().str().c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return run_main([&] { return run(argc, argv); });
}
