// labels: cpu
// A checkpoint written by the engine loads into torchvision with the documented lines
// (docs/checkpoints.md) and gives the same features. Needs Debian's python3-torch and
// python3-torchvision; without them the test says SKIPPED (exit 77), it never passes silently.
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>

#include "engine/safetensors.h"
#include "models/mira_model.h"
#include "testing.h"

using namespace mira;
using namespace mira::models;

TEST_CASE("engine checkpoint -> torchvision.models.resnet18: same EMA features") {
  if (std::system("/usr/bin/python3 -c 'import torch, torchvision' >/dev/null 2>&1") != 0) {
    std::printf("SKIPPED: /usr/bin/python3 lacks torch/torchvision (apt-get install python3-torch python3-torchvision)\n");
    std::exit(77);
  }
  namespace fs = std::filesystem;
  const fs::path dir = fs::temp_directory_path() / ("mira_tv_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  MiraModelConfig cfg;
  cfg.backbone = ResNetConfig::resnet18();
  cfg.head = HeadConfig{64, 32, 50};
  MiraModel m(cfg);
  m.init(11);
  // Train-mode forwards give the teacher non-trivial running statistics; an EMA step moves its
  // weights off the student's.
  Tensor x = Tensor::randn({4, 64, 64, 3}, 3);
  for (int i = 0; i < 3; ++i) m.teacher_logits(x);
  Tensor w = m.student().get("backbone.layer1.0.conv1.weight");
  w.copy_(Tensor::randn(w.shape(), 4, 0, 0.05));
  m.ema_update(0.5);
  const std::string ckpt = (dir / "ckpt.safetensors").string(), ref = (dir / "ref.safetensors").string();
  save_safetensors(ckpt, m.state());
  Tensor images = Tensor::randn({2, 64, 64, 3}, 7);
  save_safetensors(ref, {{"images_nhwc", images}, {"features", m.features(images, true)}});
  const std::string cmd = "/usr/bin/python3 " + std::string(MIRA_SOURCE_DIR) + "/tests/torchvision_interop.py " + ckpt +
                          " " + ref + " resnet18";
  const int rc = std::system(cmd.c_str());
  fs::remove_all(dir);
  CHECK(rc == 0);
}
