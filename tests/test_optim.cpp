// labels: cpu
// SGD / LARS against a direct transcription of the official update rules, frozen tensors, the
// EMA pass, and the schedules.
#include <cmath>

#include "engine/optim.h"
#include "engine/schedule.h"
#include "testing.h"

using namespace mira;

namespace {

struct Ref {
  std::vector<double> p, mu;
};

// Official rules on one tensor (double precision transcription of src/optimizer.py + LARS).
void ref_step(Ref& r, const std::vector<double>& g, bool decay, bool lars, double lr, double mom, double wd, double eta) {
  std::vector<double> d(g.size());
  for (size_t i = 0; i < g.size(); ++i) d[i] = g[i] + (decay ? wd * r.p[i] : 0.0);
  if (lars && decay) {
    double pn = 0, dn = 0;
    for (size_t i = 0; i < g.size(); ++i) {
      pn += r.p[i] * r.p[i];
      dn += d[i] * d[i];
    }
    pn = std::sqrt(pn);
    dn = std::sqrt(dn);
    const double q = (pn > 0 && dn > 0) ? eta * pn / dn : 1.0;
    for (double& v : d) v *= q;
  }
  for (size_t i = 0; i < g.size(); ++i) {
    r.mu[i] = mom * r.mu[i] + d[i];
    r.p[i] -= lr * r.mu[i];
  }
}

}  // namespace

TEST_CASE("SGD and LARS follow the official update, decay only for ndim > 1, frozen skipped") {
  for (const char* name : {"sgd", "lars"}) {
    CAPTURE(name);
    ParamStore ps(Device::cpu(), DType::F64);
    ps.declare("conv.weight", {4, 3, 3, 2});
    ps.declare("bn.weight", {4});
    ps.declare("head.weight", {5, 4});
    ps.declare("zero.weight", {2, 2});  // all-zero tensor: LARS ratio falls back to 1
    ps.finalize();
    ps.get("conv.weight").copy_(Tensor::randn({4, 3, 3, 2}, 1));
    ps.get("bn.weight").copy_(Tensor::randn({4}, 2));
    ps.get("head.weight").copy_(Tensor::randn({5, 4}, 3));
    OptimConfig cfg{name, 0.9, 1e-4, 0.001};
    Optimizer opt(ps, cfg);
    opt.set_frozen("head.", true);
    std::vector<std::string> names{"conv.weight", "bn.weight", "head.weight", "zero.weight"};
    std::vector<Ref> refs;
    for (const auto& n : names) refs.push_back({ps.get(n).to_vector(), std::vector<double>(ps.get(n).numel(), 0.0)});
    const bool lars = std::string(name) == "lars";
    for (int step = 0; step < 3; ++step) {
      const double lr = 0.5 + 0.1 * step;
      if (step == 2) opt.set_frozen("head.", false);
      for (size_t k = 0; k < names.size(); ++k) {
        Tensor g = Tensor::randn(ps.get(names[k]).shape(), 100 + step * 10 + k, 0, 0.1, DType::F64);
        ps.get(names[k]).grad().copy_(g);
        const bool frozen = names[k] == "head.weight" && step < 2;
        if (!frozen) ref_step(refs[k], g.to_vector(), ps.get(names[k]).ndim() > 1, lars, lr, 0.9, 1e-4, 0.001);
      }
      opt.step(lr);
    }
    for (size_t k = 0; k < names.size(); ++k) {
      CHECK(mira::testing::allclose(ps.get(names[k]).to_vector(), refs[k].p, {1e-14, 1e-12}, names[k]));
    }
  }
  ParamStore ps;
  ps.declare("w", {2, 2});
  ps.finalize();
  CHECK_THROWS_AS(Optimizer(ps, OptimConfig{"adam"}), Error);
  Optimizer opt(ps, OptimConfig{});
  CHECK_THROWS_AS(opt.set_frozen("nothing.", true), Error);
  CHECK_THROWS_AS(opt.step(NAN), Error);
}

TEST_CASE("schedules: official warm-up + cosine, beta and EMA ramps") {
  LrSchedule s{2.4, 0.0, 0.0, 10, 10, 100};
  CHECK(s.at(0) == doctest::Approx(2.4 * 1 / 11));
  CHECK(s.at(9) == doctest::Approx(2.4 * 10 / 11));
  CHECK(s.at(10) == doctest::Approx(2.4));
  CHECK(s.at(55) == doctest::Approx(2.4 * 0.5 * (1 + std::cos(M_PI * 0.5))));
  CHECK(s.at(99) > 0);
  CHECK(s.at(99) < 0.01);
  CosineRamp beta{0.7, 2.0 / 3.0, 100};
  CHECK(beta.at(0) == doctest::Approx(0.7));
  CHECK(beta.at(100) == doctest::Approx(2.0 / 3.0));
  CHECK(beta.at(50) == doctest::Approx((0.7 + 2.0 / 3.0) / 2));
  CosineRamp ema{0.99, 1.0, 100};
  CHECK(ema.at(0) == doctest::Approx(0.99));
  CHECK(ema.at(100) == 1.0);
}
