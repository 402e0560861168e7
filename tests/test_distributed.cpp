// labels: cpu
// Data parallelism without MPI: ranks as threads (engine/comm.h ThreadComm). Synchronised
// BatchNorm over 2 ranks x N/2 rows equals BatchNorm over N rows, forward and backward; three
// MIRA training steps with 2 ranks x B/2 equal 1 rank x B (SyncBN in student and teacher,
// MIRA column sums over ranks, gradients averaged in buckets during the backward pass); the
// autograd leaf-ready hook fires once per parameter, when its gradient is final; GradSync's
// bucketed reduction equals one all-reduce of the whole gradient buffer, bit for bit.
#include <map>
#include <thread>

#include "engine/grad_sync.h"
#include "engine/ops.h"
#include "models/mira_trainer.h"
#include "testing.h"

using namespace mira;
using mira::testing::allclose;

namespace {

// Runs fn(rank, comm) on `world` threads and rethrows the first failure.
void run_ranks(int world, const std::function<void(int, Communicator&)>& fn) {
  auto comms = make_thread_comms(world);
  std::vector<std::thread> threads;
  std::vector<std::exception_ptr> errors(static_cast<size_t>(world));
  for (int r = 0; r < world; ++r) {
    threads.emplace_back([&, r] {
      try {
        fn(r, *comms[r]);
      } catch (...) {
        errors[r] = std::current_exception();
      }
    });
  }
  for (auto& t : threads) t.join();
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
}

}  // namespace

TEST_CASE("SyncBN over 2 ranks equals BatchNorm over the whole batch") {
  const int N = 6, H = 3, W = 2, C = 4;
  Tensor x = Tensor::randn({N, H, W, C}, 1, 0, 2, DType::F64);
  Tensor g = Tensor::randn({C}, 2, 1, 0.2, DType::F64), b = Tensor::randn({C}, 3, 0, 0.2, DType::F64);
  Tensor dy = Tensor::randn({N, H, W, C}, 4, 0, 1, DType::F64);
  // One rank, whole batch.
  Tensor x1 = x.clone().set_requires_grad(), g1 = g.clone().set_requires_grad(), b1 = b.clone().set_requires_grad();
  ops::BatchNormState s1{Tensor::zeros({C}, DType::F64), Tensor::full({C}, 1.0, DType::F64)};
  Tensor y1 = ops::batch_norm(x1, g1, b1, s1, true);
  backward(y1, dy);
  // Two ranks, half each.
  std::vector<Tensor> y2(2), dx2(2), dg2(2), db2(2), rm(2), rv(2);
  run_ranks(2, [&](int r, Communicator& comm) {
    Tensor xr = x.slice_batch(r * N / 2, (r + 1) * N / 2).clone().set_requires_grad();
    Tensor gr = g.clone().set_requires_grad(), br = b.clone().set_requires_grad();
    ops::BatchNormState st{Tensor::zeros({C}, DType::F64), Tensor::full({C}, 1.0, DType::F64), 0, &comm};
    Tensor yr = ops::batch_norm(xr, gr, br, st, true);
    backward(yr, dy.slice_batch(r * N / 2, (r + 1) * N / 2).clone());
    y2[r] = yr;
    dx2[r] = xr.grad();
    dg2[r] = gr.grad();
    db2[r] = br.grad();
    rm[r] = st.running_mean;
    rv[r] = st.running_var;
  });
  for (int r = 0; r < 2; ++r) {
    CHECK(allclose(y2[r], y1.detach().slice_batch(r * N / 2, (r + 1) * N / 2), {1e-12, 1e-12}, "y"));
    CHECK(allclose(dx2[r], x1.grad().slice_batch(r * N / 2, (r + 1) * N / 2), {1e-12, 1e-12}, "dx"));
    CHECK(allclose(rm[r], s1.running_mean, {1e-14, 1e-12}, "running_mean"));
    CHECK(allclose(rv[r], s1.running_var, {1e-14, 1e-12}, "running_var (unbiased over all rows)"));
  }
  // Parameter gradients are local sums; their sum over ranks is the whole batch's.
  std::vector<double> dg = dg2[0].to_vector(), db = db2[0].to_vector();
  for (int c = 0; c < C; ++c) {
    dg[c] += dg2[1].to_vector()[c];
    db[c] += db2[1].to_vector()[c];
  }
  CHECK(allclose(dg, g1.grad().to_vector(), {1e-12, 1e-12}, "dgamma"));
  CHECK(allclose(db, b1.grad().to_vector(), {1e-12, 1e-12}, "dbeta"));
}

TEST_CASE("three MIRA steps: 2 ranks x B/2 equal 1 rank x B (f64), crops one by one and grouped") {
  for (bool group : {false, true}) {
    CAPTURE(group);
    models::MiraModelConfig mc;
    mc.backbone = models::ResNetConfig::tiny();
    mc.backbone.widths = {8, 8, 16, 16};
    mc.head = models::HeadConfig{32, 16, 40};
    const int B = 8;
    std::vector<std::vector<Tensor>> views(3);
    for (int s = 0; s < 3; ++s)
      for (int v = 0; v < 4; ++v)  // 2 global crops of 16 px, 2 local crops of 8 px
        views[s].push_back(Tensor::randn({B, v < 2 ? 16 : 8, v < 2 ? 16 : 8, 3}, 100 * s + v, 0, 1, DType::F64));
    const OptimConfig oc{"lars", 0.9, 1e-4, 0.001};
    auto schedule = [](int s) { return models::MiraStepSchedule{0.5 + 0.1 * s, 0.7 - 0.01 * s, 0.99, s == 0}; };

    models::MiraModel one(mc, Device::cpu(), DType::F64);
    one.init(5);
    // Small buckets: the reduction is split into many buckets started during the backward pass.
    // The one-rank reference always runs crop by crop: the grouped ranks must reproduce it.
    models::MiraStepConfig sc{0.1, 0.225, 30, 4096, 1024};
    models::MiraTrainer t1(one, oc, sc, local_comm());
    std::vector<double> loss1;
    for (int s = 0; s < 3; ++s) loss1.push_back(t1.step(views[s], schedule(s), true).loss);

    std::vector<std::vector<double>> params(2), teacher(2), loss2(2);
    run_ranks(2, [&](int r, Communicator& comm) {
      models::MiraModel m(mc, Device::cpu(), DType::F64);
      m.init(5);
      models::MiraStepConfig sc_r = sc;
      sc_r.group_crops = group;
      models::MiraTrainer t(m, oc, sc_r, comm);
      REQUIRE(t.grad_sync() != nullptr);
      for (int s = 0; s < 3; ++s) {
        std::vector<Tensor> mine;
        for (const Tensor& v : views[s]) mine.push_back(v.slice_batch(r * B / 2, (r + 1) * B / 2).clone());
        loss2[r].push_back(t.step(mine, schedule(s), true).loss);
        CHECK(t.grad_sync()->buckets().size() > 10);
        CHECK(t.grad_sync()->started_during_backward() == static_cast<int>(t.grad_sync()->buckets().size()));
      }
      params[r] = m.student().flat_params().to_vector();
      teacher[r] = m.teacher().flat_buffers().to_vector();
    });
    for (int r = 0; r < 2; ++r) {
      CHECK(allclose(loss2[r], loss1, {1e-12, 1e-11}, "loss"));
      // f64, same arithmetic up to the order of 2-term sums: agreement to ~1e-12 of the change.
      CHECK(allclose(params[r], one.student().flat_params().to_vector(), {1e-11, 1e-9}, "student parameters"));
      CHECK(allclose(teacher[r], one.teacher().flat_buffers().to_vector(), {1e-11, 1e-9}, "teacher BN statistics"));
    }
    CHECK(params[0] == params[1]);  // every rank holds bitwise the same model
  }
}

TEST_CASE("backward reports each leaf once, when its gradient is final") {
  Tensor x = Tensor::randn({5, 4}, 1, 0, 1, DType::F64);
  Tensor a = Tensor::randn({4, 4}, 2, 0, 1, DType::F64).set_requires_grad();
  Tensor b = Tensor::randn({3, 4}, 3, 0, 1, DType::F64).set_requires_grad();
  Tensor c = Tensor::randn({3}, 4, 0, 1, DType::F64).set_requires_grad();
  Tensor unused = Tensor::randn({3}, 5, 0, 1, DType::F64).set_requires_grad();
  // a is used twice, first and third on the tape; its gradient is complete only after the
  // first use has run (last in the replay).
  Tensor h = ops::relu(ops::linear(x, a));
  Tensor z = ops::linear(h, b, c);
  Tensor h2 = ops::linear(ops::relu(z), ops::reshape(b, {4, 3}));
  Tensor loss = ops::add(ops::sum(ops::linear(h2, a)), ops::sum(z));
  std::map<const AutogradMeta*, Tensor> seen;
  std::vector<const AutogradMeta*> order;
  backward(loss, Tensor(), [&](const AutogradMeta& leaf) {
    CHECK(seen.count(&leaf) == 0);
    seen[&leaf] = leaf.grad.clone();  // what the gradient was when reported complete
    order.push_back(&leaf);
  });
  REQUIRE(seen.size() == 3);
  CHECK(seen.count(unused.meta().get()) == 0);
  for (const Tensor* t : {&a, &b, &c}) {
    REQUIRE(seen.count(t->meta().get()) == 1);
    CHECK(seen[t->meta().get()].to_vector() == t->grad().to_vector());  // final: bitwise
  }
  CHECK(order.back() == a.meta().get());  // a's first use is the first node recorded
}

TEST_CASE("GradSync: buckets reduced during backward equal one all-reduce of the whole buffer") {
  models::MiraModelConfig mc;
  mc.backbone = models::ResNetConfig::tiny();
  mc.backbone.widths = {8, 8, 16, 16};
  mc.head = models::HeadConfig{32, 16, 40};
  const int world = 3, B = 6;
  Tensor x = Tensor::randn({world * B, 16, 16, 3}, 9, 0, 1, DType::F32);
  std::vector<std::vector<double>> ref(world), bucketed(world);
  std::vector<size_t> nbuckets(world);
  run_ranks(world, [&](int r, Communicator& comm) {
    models::MiraModel m(mc, Device::cpu(), DType::F32);
    m.init(11);
    m.set_comm(&comm);
    const Tensor mine = x.slice_batch(r * B, (r + 1) * B).clone();
    auto loss_of = [&] { return ops::mean(ops::log_softmax(m.student_logits(mine))); };
    ParamStore& ps = m.student();
    // Reference: the whole buffer in one blocking all-reduce after backward.
    ps.zero_grad();
    backward(loss_of());
    Tensor g = ps.flat_grads();
    comm.allreduce_sum(g);
    ref[r] = ops::scale(g, 1.0 / world).to_vector();
    // Bucketed, overlapped with backward.
    GradSync sync(ps, comm, 2048, 512);
    nbuckets[r] = sync.buckets().size();
    ps.zero_grad();
    const Tensor loss = loss_of();
    sync.begin();  // after the forward: it reads the tape
    backward(loss, Tensor(), sync.hook());
    CHECK(sync.started_during_backward() == static_cast<int>(sync.buckets().size()));
    sync.finish();
    bucketed[r] = ps.flat_grads().to_vector();
    // Buckets tile the parameters from the end of the store, without overlap.
    int64_t prev_begin = ps.flat_grads().numel() + 1;
    int params = 0;
    for (const GradSync::Bucket& k : sync.buckets()) {
      CHECK(k.end <= prev_begin);
      CHECK(k.begin < k.end);
      prev_begin = k.begin;
      params += k.params;
    }
    int declared = 0;
    for (const auto& e : ps.entries()) declared += e.kind == ParamStore::Kind::Param;
    CHECK(params == declared);
  });
  CHECK(nbuckets[0] > 10);
  for (int r = 0; r < world; ++r) CHECK(bucketed[r] == ref[r]);
  CHECK(bucketed[0] == bucketed[1]);
  CHECK(bucketed[1] == bucketed[2]);
}

TEST_CASE("ranks with different per-rank batches or crop sizes stop with an error naming the crop") {
  models::MiraModelConfig mc;
  mc.backbone = models::ResNetConfig::tiny();
  mc.backbone.widths = {8, 8, 16, 16};
  mc.head = models::HeadConfig{32, 16, 40};
  // d = 0: rank 1 holds one row less of the local crop; d = 1: the same number of pixels in
  // another shape (4 x 8 x 8 against 16 x 4 x 4), which a pixel count would not tell apart.
  for (int d : {0, 1}) {
    CAPTURE(d);
    std::vector<std::string> errors(2);
    run_ranks(2, [&](int r, Communicator& comm) {
      models::MiraModel m(mc, Device::cpu(), DType::F32);
      m.init(5);
      models::MiraTrainer t(m, OptimConfig{"sgd", 0.9, 0.0, 0.001}, {0.1, 0.225, 3}, comm);
      const Shape local = r == 0 ? Shape{4, 8, 8, 3} : d == 0 ? Shape{3, 8, 8, 3} : Shape{16, 4, 4, 3};
      std::vector<Tensor> views{Tensor::randn({4, 16, 16, 3}, 1 + r), Tensor::randn({4, 16, 16, 3}, 3 + r),
                                Tensor::randn(local, 5 + r)};
      try {
        t.step(views, models::MiraStepSchedule{0.1, 0.7, 0.99, false}, false);
      } catch (const Error& e) {
        errors[r] = e.what();
      }
    });
    for (const std::string& e : errors)
      CHECK_MESSAGE(e.find(d == 0 ? "crop 2 has a batch of 3 to 4 on different ranks"
                                  : "crop 2 has a batch of 4 to 16") != std::string::npos,
                    e);
  }
}

TEST_CASE("GradSync: parameters outside the graph do not hold back the buckets after them") {
  ParamStore ps(Device::cpu(), DType::F64);
  const int a = ps.declare("a", {64}), unused = ps.declare("unused", {64}), c = ps.declare("c", {64});
  ps.finalize();
  ps.get(a).fill_(1.0);
  ps.get(c).fill_(2.0);
  // 64 doubles per bucket: one bucket per parameter, started in the order c, unused, a.
  GradSync sync(ps, local_comm(), 512, 512);
  REQUIRE(sync.buckets().size() == 3);
  ps.zero_grad();
  CHECK_THROWS_AS(sync.begin(), Error);  // before the forward: nothing on the tape yet
  const Tensor loss = ops::add(ops::sum(ps.get(a)), ops::sum(ops::scale(ps.get(c), 3.0)));
  sync.begin();
  int reported = 0;
  backward(loss, Tensor(), [&](const AutogradMeta& m) {
    ++reported;
    sync.hook()(m);
  });
  CHECK(reported == 2);
  CHECK(sync.started_during_backward() == 3);  // all three started before finish()
  sync.finish();
  CHECK(ps.get(a).grad().to_vector()[0] == 1.0);
  CHECK(ps.get(c).grad().to_vector()[0] == 3.0);
  CHECK(ps.get(unused).grad().to_vector()[0] == 0.0);
}
