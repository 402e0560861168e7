// labels: cpu
// Numerical faults: a NaN or Inf reaching the assignment input (teacher logits), the loss, a
// gradient, or the parameters stops training with an error that names where it appeared, and
// (in mira_pretrain) keeps the last good checkpoint. No test-only hook: each fault is produced
// by inputs a user or a damaged file can supply.
//   assignment input  a NaN / Inf in the teacher's last projector layer (the EMA copy, as a
//                     damaged checkpoint holds it); it is after the last ReLU, so it reaches the
//                     teacher logits
//   loss              mira.tau_s = 1e-300: 1 / tau_s overflows f32, the student logits and the
//                     loss are not finite
//   gradient          a NaN / Inf pixel in a local crop (student only), or a NaN in the first
//                     conv of a damaged checkpoint: BatchNorm spreads it over the batch and ReLU
//                     maps NaN to 0, so the loss stays finite while the gradient of that conv
//                     is NaN
//   parameters        optim.lr = 1e300: the update overflows
#include <cstring>

#include "engine/optim.h"
#include "engine/rng.h"
#include "fault_injection.h"
#include "models/mira_trainer.h"

using namespace mira;
using namespace mira::testing;

namespace {

struct Rig {
  models::MiraModel model;
  models::MiraTrainer trainer;
  std::vector<Tensor> views;
  explicit Rig(double tau_s = 0.1)
      : model(config()), trainer(model, OptimConfig{}, {tau_s, 0.225, 3}, local_comm()) {
    model.init(1);
    for (int v = 0; v < 3; ++v) {
      const int s = v < 2 ? 16 : 8;  // two global crops, one local crop
      std::vector<float> px(static_cast<size_t>(8) * s * s * 3);
      for (size_t i = 0; i < px.size(); ++i) px[i] = static_cast<float>(philox_normal(99 + v, i));
      views.push_back(Tensor::from_vector(std::vector<double>(px.begin(), px.end()), {8, s, s, 3}, DType::F32));
    }
  }
  static models::MiraModelConfig config() {
    models::MiraModelConfig c;
    c.backbone = models::ResNetConfig::tiny();
    c.backbone.widths = {4, 4, 8, 8};
    c.backbone.stem_width = 4;
    c.head = models::HeadConfig{16, 8, 12};
    return c;
  }
  // Runs one step; returns the error message ("" when it succeeded).
  std::string step(double lr = 0.1) {
    try {
      trainer.step(views, {lr, 0.7, 0.99, false}, true);
    } catch (const Error& e) {
      return e.what();
    }
    return "";
  }
  std::vector<double> student() { return model.student().flat_params().to_vector(); }
};

void set_first(const Tensor& t, float v) { t.data<float>()[0] = v; }

bool contains(const std::string& s, const char* what) { return s.find(what) != std::string::npos; }

}  // namespace

TEST_CASE("a clean step succeeds (the rig itself is sound)") {
  Rig r;
  CHECK(r.step() == "");
}

TEST_CASE("NaN / Inf in the assignment input: the error names the assignment, parameters untouched") {
  for (float bad : {NAN, INFINITY}) {
    CAPTURE(bad);
    Rig r;
    // The teacher's projector output layer (the EMA copy, as a damaged checkpoint would hold it).
    const ParamStore& t = r.model.teacher();
    const ParamStore::Entry* e = nullptr;
    for (const auto& x : t.entries())
      if (x.kind == ParamStore::Kind::Param && x.name.find("projector") != std::string::npos) e = &x;
    REQUIRE(e != nullptr);
    set_first(e->view, bad);
    const std::vector<double> before = r.student();
    const std::string msg = r.step();
    CAPTURE(msg);
    CHECK(contains(msg, "mira_assign"));
    CHECK((contains(msg, "NaN") || contains(msg, "Inf")));
    CHECK(r.student() == before);
  }
}

TEST_CASE("a loss that is not finite: the error names the loss, parameters untouched") {
  Rig r(1e-300);
  const std::vector<double> before = r.student();
  const std::string msg = r.step();
  CAPTURE(msg);
  CHECK(contains(msg, "the loss is"));
  CHECK(r.student() == before);
}

TEST_CASE("a non-finite pixel in a student-only crop: the loss is caught, parameters untouched") {
  // ReLU propagates NaN as PyTorch does, so a bad pixel reaches the loss through the batch
  // statistics of the first BatchNorm.
  for (float bad : {NAN, INFINITY}) {
    CAPTURE(bad);
    Rig r;
    set_first(r.views[2], bad);  // a local crop: student only, so the assignment input stays finite
    const std::vector<double> before = r.student();
    const std::string msg = r.step();
    CAPTURE(msg);
    CHECK(contains(msg, "the loss is"));
    CHECK(r.student() == before);
  }
}

TEST_CASE("a non-finite gradient: the check the trainer runs before every update names the tensor") {
  for (float bad : {NAN, INFINITY}) {
    CAPTURE(bad);
    Rig r;
    ParamStore& ps = r.model.student();
    ps.zero_grad();
    CHECK_NOTHROW(models::check_finite(ps, true));
    Tensor g = ps.get("backbone.conv1.weight").grad();
    g.data<float>()[5] = bad;
    try {
      models::check_finite(ps, true);
      FAIL("expected an error");
    } catch (const Error& e) {
      CHECK(contains(e.what(), "non-finite gradient"));
      CHECK(contains(e.what(), "in 'backbone.conv1.weight' (element 5)"));
    }
  }
}

TEST_CASE("an update that overflows the parameters: the error names the parameter and the learning rate") {
  Rig r;
  const std::string msg = r.step(1e300);
  CAPTURE(msg);
  CHECK(contains(msg, "non-finite parameter after the update"));
  CHECK(contains(msg, "learning rate"));
}

TEST_CASE("mira_pretrain: each fault stops the run, names where it appeared and keeps the last good checkpoint") {
  PretrainSandbox sb("numerical_faults");
  const fs::path run = sb.dir / "run";
  const std::string log = (sb.dir / "child.log").string();
  auto args = [&](std::vector<std::string> extra) {
    std::vector<std::string> a = {"--set", "train.checkpoint_every=2", "--set", "train.epochs=10", "--resume", "auto"};
    a.insert(a.end(), extra.begin(), extra.end());
    return sb.args(run, a);
  };
  REQUIRE(run_to_end(args({"--set", "train.max_steps=4"}), {log}) == 0);
  const std::string good = apps::checkpoint_path(run.string(), 4);
  const auto good_values = checkpoint_values(good);

  struct Case {
    const char* what;
    std::vector<std::string> sets;
    const char* expect;
  };
  for (const Case& c : {Case{"loss", {"--set", "mira.tau_s=1e-300"}, "the loss is"},
                        Case{"parameters", {"--set", "optim.lr=1e300"}, "non-finite parameter after the update"}}) {
    CAPTURE(c.what);
    CHECK(run_to_end(args(c.sets), {log}) == 1);
    const std::string out = slurp_text(log);
    CAPTURE(out);
    CHECK(contains(out, c.expect));
    CHECK(contains(out, "step 5"));
    CHECK(contains(out, ("the last good checkpoint is " + good).c_str()));
    CHECK(verify_checkpoints(run) == 4);
    CHECK(checkpoint_values(good) == good_values);
  }

  // Damaged checkpoints (bit rot, a bad copy) written as step 6: a NaN in the EMA teacher's last
  // projector layer reaches the assignment input; so does one in the student's first conv,
  // which the EMA update (before the teacher's forward) carries into the teacher.
  for (const Case& c : {Case{"assignment input", {"ema.projector.6.weight"}, "mira_assign"},
                        Case{"student weight", {"backbone.conv1.weight"}, "mira_assign"}}) {
    CAPTURE(c.what);
    SafetensorsFile f = load_safetensors(good);
    REQUIRE(f.tensors.count(c.sets[0]));
    set_first(f.tensors.at(c.sets[0]), NAN);
    f.metadata["step"] = "6";  // as if written two steps later (8 steps per epoch)
    f.metadata["step_in_epoch"] = "6";
    const std::string bad = apps::checkpoint_path(run.string(), 6);
    save_safetensors(bad, {f.tensors.begin(), f.tensors.end()}, f.metadata);
    CHECK(run_to_end(args({}), {log}) == 1);
    const std::string out = slurp_text(log);
    CAPTURE(out);
    CHECK(contains(out, c.expect));
    CHECK(contains(out, "NaN") + contains(out, "nan") > 0);
    CHECK(contains(out, "step 7"));
    CHECK(checkpoint_values(good) == good_values);  // the good one is still there
    fs::remove(bad);
  }
}
