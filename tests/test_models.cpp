// labels: cpu
// Our ResNets and MIRA heads against torchvision/PyTorch (fixtures from tools/golden_models.py:
// weights from a closed-form formula computed on both sides, so only outputs and gradients
// are stored), plus parameter counts and torchvision's tensor names and shapes; mixed precision
// (ParamStore::get_as's per-tape cast cache; f32 compute under f64 parameters vs f64).
#include <cmath>
#include <cstdio>

#include "engine/safetensors.h"
#include "models/checkpoint.h"
#include "models/heads.h"
#include "models/mira_model.h"
#include "models/resnet.h"
#include "golden_formula.h"
#include "testing.h"

using namespace mira;
using namespace mira::models;
using mira::testing::allclose;
using mira::testing::formula;
using mira::testing::formula_init;
using mira::testing::formula_input;

namespace {

const std::string kFixtures = std::string(MIRA_TEST_DATA_DIR) + "/models/";

struct Fixture {
  SafetensorsFile f;
  explicit Fixture(const std::string& tag) : f(load_safetensors(kFixtures + tag + ".safetensors")) {}
  const Tensor& operator[](const std::string& k) const {
    auto it = f.tensors.find(k);
    REQUIRE_MESSAGE(it != f.tensors.end(), "fixture lacks " << k);
    return it->second;
  }
  int meta(const std::string& k) const { return std::stoi(f.metadata.at(k)); }
  double err(const std::string& k) const { return std::stod(f.metadata.at("err." + k)); }
};

// max |got - ref| / max |ref|, printed when over `limit`.
bool scaled_close(const Tensor& got, const Tensor& ref, double limit, const std::string& what) {
  REQUIRE(got.shape() == ref.shape());
  std::vector<double> g = got.to_vector(), r = ref.to_vector();
  double num = 0, den = 1e-30;
  size_t worst = 0;
  for (size_t i = 0; i < g.size(); ++i) {
    const double d = std::fabs(g[i] - r[i]);
    if (d > num) {
      num = d;
      worst = i;
    }
    den = std::max(den, std::fabs(r[i]));
  }
  if (num / den <= limit) return true;
  std::printf("[%s] scaled error %.3e over limit %.3e (worst index %zu: got %.9g ref %.9g)\n", what.c_str(), num / den,
              limit, worst, g[worst], r[worst]);
  return false;
}

// The fixture holds PyTorch's float64 results and, per output, PyTorch's own float32 error
// against them. Our f64 run must match the f64 reference to rounding level; our f32 run must
// be no worse than 4x PyTorch's own f32 error (training-mode BN over batches of 2 makes the
// ResNet-50 gradients ill-conditioned: PyTorch's f32 gradients there are off by ~0.6 %).
void check_backbone(const std::string& tag, ResNetConfig cfg, const std::vector<std::string>& grads, DType dtype) {
  Fixture fx(tag);
  const int n = fx.meta("n"), hw = fx.meta("hw");
  const bool f64 = dtype == DType::F64;
  auto limit = [&](const std::string& key) {
    // f64: summation-order rounding only; large gradients are stored in f32 in the fixture.
    if (f64) return fx[key].dtype() == DType::F32 ? 1e-6 : 1e-9;
    return std::max(4 * fx.err(key), 2e-6);
  };
  const std::string what = tag + (f64 ? " f64 " : " f32 ");
  ParamStore ps(Device::cpu(), dtype);
  ResNet net(ps, cfg);
  ps.finalize();
  formula_init(ps);
  Tensor x = formula_input("input", n, hw, dtype);
  {
    NoGradGuard ng;
    Tensor fe = net.forward(x, false);
    CHECK(scaled_close(fe, fx["features_eval"], limit("features_eval"), what + "eval features"));
  }
  Tensor ft = net.forward(x, true);
  CHECK(scaled_close(ft, fx["features_train"], limit("features_train"), what + "train features"));
  Tensor r = Tensor::from_vector(formula("head_r", ft.shape()), ft.shape(), DType::F32).to(dtype);
  Tensor loss = ops::sum(ops::linear(ops::reshape(ft, {1, ft.numel()}), ops::reshape(r, {1, r.numel()})));
  // The loss sums terms of both signs; its error is measured against sum |terms|. It is a
  // linear function of the features, so in f32 it inherits their error bound too.
  const double loss_err = std::fabs(loss.item() - fx["loss"].item()) / fx["loss_scale"].item();
  const double loss_limit = f64 ? 1e-12 : std::max(limit("loss"), limit("features_train"));
  CHECK_MESSAGE(loss_err <= loss_limit, what << "loss error " << loss_err << " over " << loss_limit);
  backward(loss);
  for (const std::string& g : grads) {
    Tensor ours = ps.get(g).grad();
    if (ours.ndim() == 4) ours = ohwi_to_oihw(ours);
    CHECK(scaled_close(ours, fx["grad." + g], limit("grad." + g), what + "grad " + g));
  }
  for (const std::string b : {"bn1.running_mean", "bn1.running_var", "layer4.0.bn1.running_var"}) {
    CHECK(scaled_close(ps.get(b), fx["after." + b], limit("after." + b), what + b));
  }
}

void check_backbone(const std::string& tag, const ResNetConfig& cfg, const std::vector<std::string>& grads) {
  check_backbone(tag, cfg, grads, DType::F64);
  check_backbone(tag, cfg, grads, DType::F32);
}

}  // namespace

TEST_CASE("parameter counts and tensor names match torchvision") {
  ParamStore p18, p50;
  ResNet r18(p18, ResNetConfig::resnet18()), r50(p50, ResNetConfig::resnet50());
  p18.finalize();
  p50.finalize();
  CHECK(p18.num_params() == 11176512);
  CHECK(p50.num_params() == 23508032);
  // torchvision's resnet50 state dict without fc: 318 entries, 53 of them num_batches_tracked.
  NamedTensors st;
  append_state(st, p50, r50.batch_norms(), "", "");
  CHECK(st.size() == 318);
  CHECK(r50.batch_norms().size() == 53);
  CHECK(p50.contains("layer1.0.downsample.0.weight"));
  CHECK(p50.contains("layer4.2.bn3.running_var"));
  CHECK(p50.get("layer2.0.conv2.weight").shape() == Shape{128, 3, 3, 128});  // OHWI of (128, 128, 3, 3)
  CHECK(p18.contains("layer2.0.downsample.1.weight"));
  CHECK(!p18.contains("layer1.0.downsample.0.weight"));
}

TEST_CASE("initialisation: kaiming fan_out convs, zero-init residual, BN 1/0") {
  ParamStore ps;
  ResNet net(ps, ResNetConfig::resnet18());
  ps.finalize();
  net.init(1);
  std::vector<double> w = ps.get("layer3.0.conv1.weight").to_vector();  // fan_out = 256 * 9
  double ss = 0;
  for (double v : w) ss += v * v;
  CHECK(std::fabs(std::sqrt(ss / w.size()) - std::sqrt(2.0 / (256 * 9))) < 0.02 * std::sqrt(2.0 / (256 * 9)));
  for (double v : ps.get("layer1.1.bn2.weight").to_vector()) CHECK(v == 0.0);
  for (double v : ps.get("layer1.1.bn1.weight").to_vector()) CHECK(v == 1.0);
  for (double v : ps.get("layer1.1.bn1.running_var").to_vector()) CHECK(v == 1.0);
  ParamStore ps2;
  ResNet net2(ps2, ResNetConfig::resnet18());
  ps2.finalize();
  net2.init(1);
  CHECK(ps.flat_params().to_vector() == ps2.flat_params().to_vector());  // seeded
}

TEST_CASE("golden: tiny ResNet (CIFAR stem, padding 1) against PyTorch") {
  check_backbone("resnet_tiny", ResNetConfig::tiny(), {"conv1.weight", "bn1.weight", "layer2.0.conv1.weight"});
}

TEST_CASE("golden: ResNet-18 against torchvision") {
  check_backbone("resnet18", ResNetConfig::resnet18(), {"conv1.weight", "bn1.weight", "layer1.0.bn2.bias"});
}

TEST_CASE("golden: ResNet-18 with the CIFAR stem, padding 2") {
  ResNetConfig c = ResNetConfig::resnet18();
  c.cifar_stem = true;
  c.cifar_stem_padding = 2;
  check_backbone("resnet18_cifar2", c, {"conv1.weight", "layer2.0.downsample.0.weight"});
}

TEST_CASE("golden: ResNet-50 against torchvision") {
  check_backbone("resnet50", ResNetConfig::resnet50(), {"conv1.weight", "bn1.weight", "layer1.0.conv1.weight"});
}

TEST_CASE("golden: projector + weight-normalised prototypes + soft-target cross-entropy") {
  Fixture fx("heads");
  const int n = fx.meta("n"), in = fx.meta("in");
  HeadConfig hc{fx.meta("hidden"), fx.meta("out"), fx.meta("k")};
  ParamStore ps(Device::cpu(), DType::F64);
  Projector proj(ps, in, hc);
  Prototypes protos(ps, hc);
  ps.finalize();
  formula_init(ps);
  Tensor f = Tensor::from_vector(formula("head_input", {n, in}), {n, in}, DType::F32).to(DType::F64);
  Tensor logits = protos.forward(proj.forward(f, true));
  // f64 on both sides: agreement to rounding level.
  CHECK(allclose(logits, fx["logits"], {1e-12, 1e-10}, "head logits"));
  // Targets: softmax(5 * formula) rows, as the fixture script.
  std::vector<double> t = formula("head_targets", {n, hc.prototypes});
  for (int i = 0; i < n; ++i) {
    double m = -1e300, s = 0;
    for (int k = 0; k < hc.prototypes; ++k) m = std::max(m, 5.0 * float(t[i * hc.prototypes + k]));
    for (int k = 0; k < hc.prototypes; ++k) s += std::exp(5.0 * float(t[i * hc.prototypes + k]) - m);
    for (int k = 0; k < hc.prototypes; ++k) t[i * hc.prototypes + k] = std::exp(5.0 * float(t[i * hc.prototypes + k]) - m) / s;
  }
  Tensor targets = Tensor::from_vector(t, {n, hc.prototypes}, DType::F64);
  Tensor loss = ops::soft_cross_entropy(ops::scale(logits, 1.0 / 0.1), targets);
  CHECK(std::fabs(loss.item() - fx["loss"].item()) < 1e-11);
  backward(loss);
  for (const std::string g : {"projector.0.weight", "projector.1.weight", "projector.6.bias", "prototypes.weight_v"}) {
    // projector.0.weight's gradient is stored in f32 (fixture size): 1e-7 relative.
    CHECK(allclose(ps.get(g).grad(), fx["grad." + g], {1e-12, 2e-7}, "grad " + g));
  }
}

TEST_CASE("ParamStore::get_as: one cast per parameter and tape, stale after backward") {
  ParamStore ps(Device::cpu(), DType::F64);
  const int w = ps.declare("w", {3, 4});
  ps.finalize();
  ps.get(w).copy_(Tensor::randn({3, 4}, 1, 0, 1, DType::F64));
  Tensor x = Tensor::randn({2, 4}, 2, 0, 1, DType::F32);
  const Tensor a = ps.get_as(w, DType::F32), b = ps.get_as(w, DType::F32);
  CHECK(a.meta() == b.meta());  // shared on this tape
  CHECK(ps.get_as(w, DType::F64).meta() == ps.get(w).meta());
  Tensor loss = ops::add(ops::sum(ops::linear(x, a)), ops::sum(ops::scale(ops::linear(x, b), 2.0)));
  ps.zero_grad();
  backward(loss);
  // d/dw sum(x w^T) = column sums of x for every row of w, times 1 + 2.
  const std::vector<double> xv = x.to_vector(), g = ps.get(w).grad().to_vector();
  for (int o = 0; o < 3; ++o)
    for (int i = 0; i < 4; ++i) CHECK(std::fabs(g[o * 4 + i] - 3.0 * (xv[i] + xv[4 + i])) < 1e-6);
  // A parameter changed outside autograd on the same tape (an optimiser step, a checkpoint
  // load): clear_casts() makes the next use cast the new values.
  ps.get(w).fill_(2.0);
  ps.clear_casts();
  {
    const Tensor fresh = ps.get_as(w, DType::F32);
    CHECK(fresh.to_vector()[0] == 2.0);
    backward(ops::sum(ops::linear(x, fresh)));  // consume the tape
  }
  // After backward the cached cast belongs to a finished tape: a new one is made.
  ps.get(w).fill_(0.5);
  const Tensor c = ps.get_as(w, DType::F32);
  CHECK(c.meta() != a.meta());
  CHECK(c.to_vector()[0] == 0.5);
  clear_tape();
  {
    NoGradGuard ng;  // nothing recorded: not cached either
    CHECK(ps.get_as(w, DType::F32).raw() != ps.get_as(w, DType::F32).raw());
  }
}

TEST_CASE("mixed precision plumbing: f32 compute under f64 parameters tracks the f64 model") {
  MiraModelConfig mc;
  mc.backbone = ResNetConfig::tiny();
  mc.head = HeadConfig{32, 16, 20};
  MiraModel ref(mc, Device::cpu(), DType::F64), mixed(mc, Device::cpu(), DType::F64);
  ref.init(3);
  mixed.init(3);
  mixed.set_compute_dtype(DType::F32);
  Tensor x = Tensor::randn({6, 16, 16, 3}, 4, 0, 1, DType::F64);
  Tensor x2 = Tensor::randn({6, 8, 8, 3}, 5, 0, 1, DType::F64);
  std::vector<double> loss;
  for (MiraModel* m : {&ref, &mixed}) {
    m->student().zero_grad();
    // two crops on one tape: the second reuses the first's weight casts
    const size_t before = tape_size();
    Tensor l1 = m->student_logits(x);
    const size_t first = tape_size() - before;
    Tensor l2 = m->student_logits(x2);
    const size_t second = tape_size() - before - first;
    if (m == &mixed) CHECK(second < first);  // no casts of the weights the second time
    CHECK(l1.dtype() == DType::F64);         // logits in the parameters' dtype
    Tensor lsum = ops::add(ops::sum(ops::scale(ops::log_softmax(l1), 0.1)), ops::sum(ops::log_softmax(l2)));
    loss.push_back(lsum.item());
    backward(lsum);
  }
  CHECK(std::fabs(loss[1] - loss[0]) < 1e-4 * std::fabs(loss[0]));
  // f32 compute: gradients agree with the f64 model to f32 precision, and every parameter got one
  CHECK(allclose(mixed.student().flat_grads(), ref.student().flat_grads(), {1e-4, 1e-3}, "mixed-precision grads"));
  // BN running statistics stay f64 and close
  CHECK(allclose(mixed.student().flat_buffers(), ref.student().flat_buffers(), {1e-5, 1e-5}, "BN running stats"));
  const Tensor f = mixed.features(x, true);
  CHECK(f.dtype() == DType::F64);
}
