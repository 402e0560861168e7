// labels: cpu
// Three MIRA training steps of the tiny model against PyTorch (tools/golden_train.py): two
// global and two local crops, EMA teacher, official MIRA targets, swapped-prediction loss,
// LARS, prototypes frozen in the first step. The fixture holds PyTorch's float64 results and
// its own float32 error per output. Also with same-size crops grouped into one forward
// (MiraStepConfig::group_crops, per-crop BN statistics): the official per-crop semantics.
#include <cmath>
#include <cstdio>
#include <map>
#include <sstream>

#include "engine/profile.h"
#include "engine/safetensors.h"
#include "golden_formula.h"
#include "models/mira_trainer.h"
#include "testing.h"

using namespace mira;
using namespace mira::models;

namespace {

double meta_num(const SafetensorsFile& f, const std::string& k) { return std::stod(f.metadata.at(k)); }

// "[0.5, 0.9, 0.7]" -> values
std::vector<double> meta_list(const SafetensorsFile& f, const std::string& k) {
  std::string s = f.metadata.at(k);
  std::vector<double> out;
  for (char& c : s)
    if (c == '[' || c == ']' || c == ',') c = ' ';
  std::istringstream is(s);
  for (double v; is >> v;) out.push_back(v);
  return out;
}

void run_golden(DType dtype, bool group_crops = false) {
  SafetensorsFile fx = load_safetensors(std::string(MIRA_TEST_DATA_DIR) + "/train/tiny_3steps.safetensors");
  const int n = int(meta_num(fx, "n")), ghw = int(meta_num(fx, "global_hw")), lhw = int(meta_num(fx, "local_hw"));
  const int n_local = int(meta_num(fx, "n_local"));
  MiraModelConfig cfg;
  cfg.backbone = ResNetConfig::tiny();
  cfg.head = HeadConfig{int(meta_num(fx, "hidden")), int(meta_num(fx, "out")), int(meta_num(fx, "k"))};
  MiraModel model(cfg, Device::cpu(), dtype);
  mira::testing::formula_init(model.student());
  model.reset_teacher();
  std::map<std::string, std::vector<double>> init;
  for (const auto& e : model.student().entries()) init[e.name] = e.view.to_vector();
  for (const auto& e : model.teacher().entries()) init["ema." + e.name] = e.view.to_vector();

  OptimConfig oc{"lars", meta_num(fx, "momentum"), meta_num(fx, "wd"), meta_num(fx, "eta")};
  MiraStepConfig sc{meta_num(fx, "tau_s"), meta_num(fx, "tau_t"), int(meta_num(fx, "iters"))};
  sc.group_crops = group_crops;  // the same values: each crop keeps its own BN statistics
  MiraTrainer trainer(model, oc, sc, local_comm());
  const auto lr = meta_list(fx, "lr"), beta = meta_list(fx, "beta"), ema = meta_list(fx, "ema");
  const auto freeze = meta_list(fx, "freeze");
  std::vector<double> losses;
  for (int step = 0; step < 3; ++step) {
    std::vector<Tensor> views;
    for (int v = 0; v < 2 + n_local; ++v) {
      views.push_back(mira::testing::formula_input("step" + std::to_string(step) + ".view" + std::to_string(v), n,
                                                   v < 2 ? ghw : lhw, dtype));
    }
    if (group_crops && step == 0) {
      prof::set_enabled(true);  // to see the batches the stem convolution gets
      prof::reset();
    }
    MiraStepStats st = trainer.step(views, {lr[step], beta[step], ema[step], freeze[step] != 0}, true);
    if (group_crops && step == 0) {
      // The grouping happened: the stem saw the two global crops as one batch, the local ones too.
      std::FILE* f = std::tmpfile();
      REQUIRE(f);
      prof::report(f, 1);
      prof::set_enabled(false);
      std::rewind(f);
      std::string report;
      for (int c; (c = std::fgetc(f)) != EOF;) report += static_cast<char>(c);
      std::fclose(f);
      for (const std::string& batch : {std::to_string(ghw) + "px N" + std::to_string(2 * n),
                                       std::to_string(lhw) + "px N" + std::to_string(n_local * n)})
        CHECK_MESSAGE(report.find("conv2d fwd 3x3/1 3>16 " + batch) != std::string::npos, batch << "\n" << report);
    }
    losses.push_back(st.loss);
    CHECK(st.clusters_in_use > 0);
    CHECK(st.marginal_entropy > 0);
  }
  const bool f64 = dtype == DType::F64;
  // Losses: f64 agrees to rounding; f32 within 4x PyTorch's own f32 error (floor 1e-6).
  std::vector<double> ref_loss = fx.tensors.at("loss").to_vector();
  const double loss_tol = f64 ? 1e-10 : std::max(4 * std::stod(fx.metadata.at("err.loss")), 1e-6);
  for (int i = 0; i < 3; ++i) {
    CHECK_MESSAGE(std::fabs(losses[i] - ref_loss[i]) <= loss_tol * std::fabs(ref_loss[i]),
                  "step " << i << " loss " << losses[i] << " vs " << ref_loss[i]);
  }
  // Parameters: compare the CHANGE over the three steps (LARS moves weights by ~1e-3 of their
  // size, so comparing final values would hide a wrong update). Tolerance relative to the
  // largest change: f64 1e-7 (deltas lose ~6 digits to cancellation); f32 4x PyTorch's
  // own f32 error on the final values, divided by the relative size of the change.
  for (const auto& [name, ref] : fx.tensors) {
    if (name == "loss") continue;
    const bool ema_name = name.rfind("ema.", 0) == 0;
    Tensor ours = ema_name ? model.teacher().get(name.substr(4)) : model.student().get(name);
    if (ours.ndim() == 4) ours = ohwi_to_oihw(ours);
    std::vector<double> got = ours.to_vector(), want = ref.to_vector();
    std::vector<double> base = init.at(name);
    if (ref.ndim() == 4) {  // the saved initial values are OHWI like the store
      const Shape ohwi = (ema_name ? model.teacher().get(name.substr(4)) : model.student().get(name)).shape();
      base = ohwi_to_oihw(Tensor::from_vector(base, ohwi, DType::F64)).to_vector();
    }
    double max_delta = 1e-300, max_err = 0, max_val = 1e-300;
    for (size_t i = 0; i < got.size(); ++i) {
      max_delta = std::max(max_delta, std::fabs(want[i] - base[i]));
      max_err = std::max(max_err, std::fabs(got[i] - want[i]));
      max_val = std::max(max_val, std::fabs(want[i]));
    }
    const double torch_err = std::stod(fx.metadata.at("err." + name)) * max_val;
    const double limit = f64 ? 1e-7 * max_delta + 1e-15 : std::max(4 * torch_err, 1e-6 * max_val);
    CHECK_MESSAGE(max_err <= limit, name << (f64 ? " f64" : " f32") << ": max error " << max_err << ", limit "
                                         << limit << ", largest change " << max_delta);
    CHECK_MESSAGE(max_delta > 0, name << " did not change");
  }
}

}  // namespace

TEST_CASE("golden: three MIRA training steps match PyTorch, f64") { run_golden(DType::F64); }
TEST_CASE("golden: three MIRA training steps match PyTorch, f32") { run_golden(DType::F32); }
TEST_CASE("golden: three MIRA training steps match PyTorch with same-size crops grouped, f64") {
  run_golden(DType::F64, true);
}
TEST_CASE("golden: three MIRA training steps match PyTorch with same-size crops grouped, f32") {
  run_golden(DType::F32, true);
}
