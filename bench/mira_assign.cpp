// The MIRA assignment (and Sinkhorn-Knopp) as a tool and as a benchmark.
//
//   tool:        mira_assign --logits IN.npy --out OUT.npy [--tau 0.225] [--beta 0.6667] [--iters 30]
//                            [--method mira|sinkhorn] [--eps 0.05] [--device cpu|cuda] [--stats]
//                IN.npy: f32 or f64, (N, K) or (V, N, K) (V views, each with its own column sums);
//                OUT.npy: f32 targets of the same shape. --stats prints one JSON line per view.
//   convergence: mira_assign --convergence [--logits IN.npy | --n 256 --k 300 --std 0.3 --seed 1]
//                            [--tau ..] [--beta ..] [--eps 0.05] [--max-iters 30] [--ref-iters 1000]
//                JSON lines: the sum of squared errors to the ref-iters solution after each
//                iteration, for MIRA and for Sinkhorn-Knopp, in f64 (the paper's Fig. 2);
//                tools/plot_convergence.py draws them.
//   timing:      mira_assign --time [--device cuda|cpu] [--n 4096] [--k 3000] [--views 2] [--iters 30]
//                            [--reps 50] [--warmup 5] [--pytorch auto|none|PATH] [--python python3]
//                One JSON line per variant: every variant's result is first checked against the
//                CPU f64 reference, then timed with CUDA events after warm-up on 4 rotating input
//                sets; median and min ms, GB/s against two stated byte counts. Then the PyTorch
//                version of the official function (bench/pytorch_mira_assign.py) on the same
//                inputs and card, validated the same way, and a summary line last.
// Without arguments: --time. Exit code 1 on an error (message and usage on stderr).
#include <unistd.h>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "engine/comm.h"
#include "engine/cuda_backend.h"
#include "engine/error.h"
#include "engine/mira_assign.h"
#include "engine/npy.h"
#include "engine/rng.h"

#ifdef MIRA_HAS_CUDA
#include "engine/cuda/context.h"
#include "kernels/cpu/mira_trace.h"
#include "kernels/cuda/mira_assign.cuh"
#include "kernels/cuda/sync_probe.cuh"
#endif

using namespace mira;
using json = nlohmann::json;

namespace {

struct Args {
  std::map<std::string, std::string> kv;
  bool has(const std::string& k) const { return kv.count(k) > 0; }
  std::string str(const std::string& k, const std::string& def) const { return has(k) ? kv.at(k) : def; }
  double num(const std::string& k, double def) const {
    if (!has(k)) return def;
    try {
      size_t pos = 0;
      const double v = std::stod(kv.at(k), &pos);
      if (pos == kv.at(k).size()) return v;
    } catch (const std::exception&) {
    }
    MIRA_FAIL("--", k, " takes a number, got '", kv.at(k), "'");
  }
  int integer(const std::string& k, int def) const {
    const double v = num(k, def);
    MIRA_CHECK(v == std::floor(v) && std::fabs(v) < 1e9, "--", k, " takes an integer, got '", kv.at(k), "'");
    return static_cast<int>(v);
  }
};

const char* kUsage =
    "usage: mira_assign --logits IN.npy --out OUT.npy [--tau T] [--beta B] [--iters I]\n"
    "                   [--method mira|sinkhorn] [--eps E] [--device cpu|cuda] [--stats]\n"
    "                   [--working-copy f32|bf16|f16] [--exact-passes P]\n"
    "       mira_assign --convergence [--logits IN.npy | --n N --k K --std S --seed S] [--max-iters M] [--ref-iters "
    "R]\n"
    "       mira_assign --time [--device cuda|cpu] [--n N] [--k K] [--views V] [--iters I] [--reps R]\n"
    "                   [--warmup W] [--pytorch auto|none|PATH] [--python EXE] [--trace]\n"
    "                   [--variants NAME,NAME,...]\n"
    "         --trace: one more launch per fused variant with per-phase clock64 timing (trace_us)\n"
    "         --variants: only these CUDA rows (names as printed; e.g. for a profiler)\n"
    "       mira_assign --probe-cluster [--iters I]\n"
    "         the cluster plan's primitives on this GPU: cycles per cluster barrier and per DSMEM\n"
    "         load, and clusters of one ~200 KB block per SM at once, for 1-16 blocks\n"
    "       mira_assign --probe-sync [--iters I]\n"
    "         grid barriers on this GPU: cycles per cooperative_groups grid.sync() and per counter\n"
    "         barrier (one arrival per block, or per cluster of 2-8), 1 and 2 blocks per SM, each\n"
    "         also checked for memory ordering (errors: failed checks)\n";

const char* kFlags[] = {"stats", "convergence", "time", "trace", "help", "probe-cluster", "probe-sync"};
const char* kOptions[] = {"logits",  "out",     "tau",       "beta",      "iters",  "method",       "eps",
                          "device",  "n",       "k",         "std",       "seed",   "views",        "reps",
                          "warmup",  "pytorch", "max-iters", "ref-iters", "python", "working-copy", "exact-passes",
                          "variants"};

Args parse_args(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    std::string s = argv[i];
    MIRA_CHECK(s.size() > 2 && s.rfind("--", 0) == 0, "unexpected argument '", s, "'");
    s = s.substr(2);
    const bool flag = std::find(std::begin(kFlags), std::end(kFlags), s) != std::end(kFlags);
    if (flag) {
      a.kv[s] = "1";
    } else {
      MIRA_CHECK(std::find(std::begin(kOptions), std::end(kOptions), s) != std::end(kOptions), "unknown option --", s);
      MIRA_CHECK(i + 1 < argc, "--", s, " needs a value");
      a.kv[s] = argv[++i];
    }
  }
  return a;
}

void print(const json& j) {
  std::printf("%s\n", j.dump().c_str());
  std::fflush(stdout);
}

bool cuda_available() {
  return cuda::built_with_cuda() && cuda::device_count() > 0;
}

Device parse_device(const Args& a, bool default_cuda) {
  const std::string d = a.str("device", default_cuda && cuda_available() ? "cuda" : "cpu");
  MIRA_CHECK(d == "cpu" || d == "cuda", "--device is cpu or cuda, got '", d, "'");
  if (d == "cuda")
    MIRA_CHECK(cuda_available(),
               "--device cuda: ", cuda::built_with_cuda() ? "no CUDA device" : "this build has no CUDA backend");
  return d == "cuda" ? Device::cuda(0) : Device::cpu();
}

double sse(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += (a[i] - b[i]) * (a[i] - b[i]);
  return s;
}

// Worst |got - ref| and whether every pair is within atol + rtol |ref|.
std::pair<double, bool> compare(const std::vector<double>& got, const std::vector<double>& ref, double atol,
                                double rtol) {
  if (got.size() != ref.size()) return {INFINITY, false};
  double worst = 0;
  bool ok = true;
  for (size_t i = 0; i < got.size(); ++i) {
    const double d = std::fabs(got[i] - ref[i]);
    if (!(d <= atol + rtol * std::fabs(ref[i]))) ok = false;
    worst = std::max(worst, std::isnan(d) ? INFINITY : d);
  }
  return {worst, ok};
}

// (V, N, K) or (N, K) logits from a .npy file as CPU views of shape (N, K).
std::vector<Tensor> read_views(const std::string& path, std::vector<int64_t>* shape) {
  const NpyArray a = npy_read(path);
  MIRA_CHECK(a.type == NpyType::F32 || a.type == NpyType::F64, "--logits: f32 or f64 arrays only, '", path, "' holds ",
             npy_type_descr(a.type));
  MIRA_CHECK(a.shape.size() == 2 || a.shape.size() == 3, "--logits: (N, K) or (V, N, K), '", path, "' has ",
             a.shape.size(), " dimensions");
  *shape = a.shape;
  const Tensor t = npy_to_tensor(a);
  if (a.shape.size() == 2) return {t};
  const int64_t V = a.shape[0], N = a.shape[1], K = a.shape[2];
  const Tensor flat = t.reshape({V * N, K});
  std::vector<Tensor> views;
  for (int64_t v = 0; v < V; ++v) views.push_back(flat.slice_batch(v * N, (v + 1) * N));
  return views;
}

json stats_json(const AssignStats& s, int view) {
  return {{"view", view},
          {"kkt_residual", std::isnan(s.kkt_residual) ? json(nullptr) : json(s.kkt_residual)},
          {"target_entropy", s.target_entropy},
          {"marginal_entropy", s.marginal_entropy}};
}

int run_tool(const Args& a) {
  MIRA_CHECK(a.has("out"), "--logits needs --out");
  const std::string method = a.str("method", "mira");
  MIRA_CHECK(method == "mira" || method == "sinkhorn", "--method is mira or sinkhorn, got '", method, "'");
  MIRA_CHECK(method == "mira" || (!a.has("working-copy") && !a.has("exact-passes")),
             "--working-copy and --exact-passes apply to --method mira");
  const Device dev = parse_device(a, false);
  std::vector<int64_t> shape;
  std::vector<Tensor> views = read_views(a.str("logits", ""), &shape);
  for (auto& v : views) {
    if (dev.is_cuda()) v = v.to(DType::F32).to(dev);
  }
  std::vector<Tensor> out;
  std::vector<AssignStats> stats;
  const bool want_stats = a.has("stats");
  if (method == "mira") {
    // The working copy of E (docs/assignment.md): f32 (exact, the default), or 16 bits with
    // the last --exact-passes updates on exact E.
    AssignOptions o;
    o.working_copy = parse_assign_working_copy(a.str("working-copy", "f32"));
    o.exact_passes = a.integer("exact-passes", 0);
    out = mira_assign(views, a.num("tau", 0.225), a.num("beta", 2.0 / 3.0), a.integer("iters", 30), local_comm(),
                      want_stats ? &stats : nullptr, o);
  } else {
    for (const auto& v : views) {
      AssignStats s;
      out.push_back(
          sinkhorn_assign(v, a.num("eps", 0.05), a.integer("iters", 3), local_comm(), want_stats ? &s : nullptr));
      stats.push_back(s);
    }
  }
  std::vector<float> all;
  for (const auto& t : out) {
    const std::vector<double> v = t.to_vector();
    all.insert(all.end(), v.begin(), v.end());
  }
  npy_write(a.str("out", ""), NpyType::F32, shape, all.data());
  if (want_stats)
    for (size_t v = 0; v < stats.size(); ++v) print(stats_json(stats[v], static_cast<int>(v)));
  return 0;
}

int run_convergence(const Args& a) {
  const double tau = a.num("tau", 0.225), beta = a.num("beta", 2.0 / 3.0), eps = a.num("eps", 0.05);
  const int max_iters = a.integer("max-iters", 30), ref_iters = a.integer("ref-iters", 1000);
  MIRA_CHECK(max_iters >= 1 && ref_iters >= max_iters, "--max-iters must be >= 1 and <= --ref-iters");
  Tensor L;
  json config = {{"tau", tau}, {"beta", beta}, {"eps", eps}, {"ref_iters", ref_iters}, {"precision", "f64"}};
  if (a.has("logits")) {
    std::vector<int64_t> shape;
    L = read_views(a.str("logits", ""), &shape)[0].to(DType::F64);
    config["logits"] = a.str("logits", "");
  } else {
    const int64_t N = a.integer("n", 256), K = a.integer("k", 300);
    const double sd = a.num("std", 0.3);
    const uint64_t seed = static_cast<uint64_t>(a.integer("seed", 1));
    L = Tensor::randn({N, K}, seed, 0.0, sd, DType::F64);
    config["logits"] = "N(0, " + std::to_string(sd) + "^2), seed " + std::to_string(seed);
  }
  config["N"] = L.dim(0);
  config["K"] = L.dim(1);
  print({{"config", config}});
  const std::vector<double> ref = mira_assign(L, tau, beta, ref_iters).to_vector();
  for (int t = 0; t <= max_iters; ++t) {
    AssignStats s;
    const std::vector<double> got = mira_assign(L, tau, beta, t, local_comm(), &s).to_vector();
    print({{"method", "mira"}, {"iter", t}, {"sse", sse(got, ref)}, {"kkt", s.kkt_residual}});
  }
  const std::vector<double> sk_ref = sinkhorn_assign(L, eps, ref_iters).to_vector();
  for (int t = 1; t <= max_iters; ++t) {
    const std::vector<double> got = sinkhorn_assign(L, eps, t).to_vector();
    print({{"method", "sinkhorn"}, {"iter", t}, {"sse", sse(got, sk_ref)}});
  }
  return 0;
}

// ---- timing

struct Timing {
  std::vector<double> ms;
  double median() const {
    std::vector<double> s = ms;
    std::sort(s.begin(), s.end());
    return s.empty() ? NAN : s[s.size() / 2];
  }
  double min() const { return ms.empty() ? NAN : *std::min_element(ms.begin(), ms.end()); }
};

std::string find_pytorch_script(const Args& a) {
  const std::string p = a.str("pytorch", "auto");
  if (p == "none") return "";
  if (p != "auto") return p;
  for (const std::string& c :
       {std::string("bench/pytorch_mira_assign.py"), std::string(MIRA_SOURCE_DIR) + "/bench/pytorch_mira_assign.py"})
    if (std::filesystem::exists(c)) return c;
  return "";
}

// Runs the PyTorch version on the views (set 0), returns its JSON line (with validation added).
json run_pytorch(const std::string& python, const std::string& script, const std::vector<Tensor>& views_cpu,
                 const std::vector<std::vector<double>>& ref, double tau, double beta, int iters, int reps, int warmup,
                 const std::string& device) {
  json j = {{"variant", "pytorch"}};
  if (script.empty()) {
    j["skipped"] = "no script (--pytorch none, or bench/pytorch_mira_assign.py not found)";
    return j;
  }
  if (std::system(("'" + python + "' -c 'import torch' >/dev/null 2>&1").c_str()) != 0) {
    j["skipped"] = python + " cannot import torch";
    return j;
  }
  const auto dir = std::filesystem::temp_directory_path() / ("mira_assign_bench_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  const int64_t V = static_cast<int64_t>(views_cpu.size()), N = views_cpu[0].dim(0), K = views_cpu[0].dim(1);
  std::vector<float> in;
  for (const auto& v : views_cpu) {
    const auto x = v.to_vector();
    in.insert(in.end(), x.begin(), x.end());
  }
  const std::string in_path = (dir / "logits.npy").string(), out_path = (dir / "targets.npy").string();
  npy_write(in_path, NpyType::F32, {V, N, K}, in.data());
  char cmd[4096];
  std::snprintf(cmd, sizeof(cmd),
                "'%s' '%s' --logits '%s' --out '%s' --tau %.17g --beta %.17g --iters %d --reps %d --warmup %d "
                "--device %s 2>&1",
                python.c_str(), script.c_str(), in_path.c_str(), out_path.c_str(), tau, beta, iters, reps, warmup,
                device.c_str());
  FILE* pipe = popen(cmd, "r");
  MIRA_CHECK(pipe, "cannot run '", cmd, "'");
  std::string line, last_json, output;
  char buf[4096];
  while (std::fgets(buf, sizeof(buf), pipe)) {
    output += buf;
    line = buf;
    if (!line.empty() && line[0] == '{') last_json = line;
  }
  const int rc = pclose(pipe);
  if (rc != 0 || last_json.empty()) {
    j["error"] =
        "exit status " + std::to_string(rc) + ": " + output.substr(output.size() > 600 ? output.size() - 600 : 0);
    std::filesystem::remove_all(dir);
    return j;
  }
  j = json::parse(last_json);
  const NpyArray t = npy_read(out_path);
  std::vector<double> got(t.as<float>(), t.as<float>() + t.numel()), all_ref;
  for (const auto& r : ref) all_ref.insert(all_ref.end(), r.begin(), r.end());
  const auto [err, ok] = compare(got, all_ref, 1e-5, 1e-3);
  j["max_abs_err"] = err;
  j["valid"] = ok;
  std::filesystem::remove_all(dir);
  return j;
}

std::vector<Tensor> random_views(int V, int64_t N, int64_t K, uint64_t seed) {
  std::vector<Tensor> v;
  for (int i = 0; i < V; ++i) v.push_back(Tensor::randn({N, K}, seed * 16 + i, 0.0, 0.3, DType::F32));
  return v;
}

std::vector<std::vector<double>> reference(const std::vector<Tensor>& views_cpu, double tau, double beta, int iters) {
  std::vector<std::vector<double>> ref;
  for (const auto& v : views_cpu) ref.push_back(mira_assign(v.to(DType::F64), tau, beta, iters).to_vector());
  return ref;
}

int run_time_cpu(const Args& a, int V, int64_t N, int64_t K, double tau, double beta, int iters) {
  const int reps = a.integer("reps", 3), warmup = a.integer("warmup", 1);
  std::vector<std::vector<Tensor>> sets;
  for (int s = 0; s < 2; ++s) sets.push_back(random_views(V, N, K, s + 1));
  const auto ref = reference(sets[0], tau, beta, iters);
  const auto out = mira_assign(sets[0], tau, beta, iters);
  double err = 0;
  bool ok = true;
  for (int v = 0; v < V; ++v) {
    const auto [e, good] = compare(out[v].to_vector(), ref[v], 1e-6, 1e-4);
    err = std::max(err, e);
    ok = ok && good;
  }
  Timing t;
  for (int r = 0; r < warmup + reps; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    mira_assign(sets[r % 2], tau, beta, iters);
    const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    if (r >= warmup) t.ms.push_back(ms);
  }
  const json mine = {{"variant", "cpu f32"},
                     {"device", "cpu"},
                     {"N", N},
                     {"K", K},
                     {"views", V},
                     {"iters", iters},
                     {"median_ms", t.median()},
                     {"min_ms", t.min()},
                     {"max_abs_err", err},
                     {"valid", ok}};
  print(mine);
  const json pt = run_pytorch(a.str("python", "python3"), find_pytorch_script(a), sets[0], ref, tau, beta, iters, reps,
                              warmup, "cpu");
  print(pt);
  json summary = {{"summary", "mira_assign"}, {"device", "cpu"}, {"ms", t.median()}};
  if (pt.contains("median_ms"))
    summary["pytorch_ms"] = pt["median_ms"], summary["speedup"] = pt["median_ms"].get<double>() / t.median();
  print(summary);
  return ok ? 0 : 1;
}

#ifdef MIRA_HAS_CUDA

// What the probes' JSON lines carry: the card, its clock (kHz) and SMs, and --iters.
struct ProbeSetup {
  std::string device;
  int khz = 0, sms = 0, iters = 0;
};
ProbeSetup probe_setup(const Args& a) {
  ProbeSetup s;
  s.iters = a.integer("iters", 1000);
  MIRA_CHECK(s.iters >= 1, "--iters must be >= 1");
  cudaDeviceProp prop{};
  MIRA_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  s.device = prop.name;
  s.sms = prop.multiProcessorCount;
  MIRA_CUDA_CHECK(cudaDeviceGetAttribute(&s.khz, cudaDevAttrClockRate, 0));
  return s;
}

// --probe-cluster: one JSON line per cluster size.
int run_probe_cluster(const Args& a) {
  const ProbeSetup ps = probe_setup(a);
  const int iters = ps.iters, khz = ps.khz;
  Tensor scratch = Tensor::empty({32}, DType::I64, Device::cuda(0));
  for (int size = 1; size <= 16; size *= 2) {
    const cuda::ClusterProbe r = cuda::mira_cluster_probe(size, iters, static_cast<long long*>(scratch.raw()));
    json j = {{"probe", "cluster"},
              {"device", ps.device},
              {"size", size},
              {"barrier_cycles", r.barrier_cycles},
              {"dsmem_cycles", r.dsmem_cycles},
              {"clusters_at_once", r.active},
              {"clock_mhz", khz / 1000.0}};
    if (r.barrier_cycles > 0) j["barrier_us_at_clock"] = r.barrier_cycles / (khz * 1e-3);
    print(j);
  }
  return 0;
}

// --probe-sync: one JSON line per barrier kind, blocks per SM and cluster size.
int run_probe_sync(const Args& a) {
  const ProbeSetup ps = probe_setup(a);
  const int iters = ps.iters, khz = ps.khz;
  using GS = cuda::GridSync;
  struct Row {
    GS kind;
    int cluster;
  };
  const Row rows[] = {{GS::Cooperative, 1},
                      {GS::Counter, 1},
                      {GS::ClusterCounter, 2},
                      {GS::ClusterCounter, 4},
                      {GS::ClusterCounter, 8}};
  const size_t scratch_bytes = cuda::sync_probe_scratch_bytes(2 * ps.sms, cuda::kSyncProbeThreads);
  Tensor scratch = Tensor::empty({static_cast<int64_t>(scratch_bytes)}, DType::U8, Device::cuda(0));
  bool ok = true;
  for (int bps = 1; bps <= 2; ++bps)
    for (const Row& row : rows) {
      const cuda::SyncProbe r =
          cuda::mira_sync_probe(row.kind, bps, row.cluster, 200, iters, scratch.raw(), scratch_bytes);
      json j = {{"probe", "sync"},      {"device", ps.device},  {"kind", cuda::grid_sync_name(row.kind)},
                {"blocks_per_sm", bps}, {"cluster", r.cluster}, {"blocks", r.blocks},
                {"cycles", r.cycles},   {"errors", r.errors},   {"clock_mhz", khz / 1000.0}};
      if (r.blocks > 0) j["us_at_clock"] = r.cycles / (khz * 1e-3);
      print(j);
      ok = ok && r.errors == 0;
    }
  return ok ? 0 : 1;
}

// The trace's timelines (kernels/cpu/mira_trace.h): whether the two blocks of an SM update
// rows at the same time (and how long a block's rows take alone, or beside the other's), and
// per barrier group how far apart its blocks arrive at the barrier after their rows, and
// whether the same blocks come last pass after pass. Times in us, from the launch's cycles per
// us (the blocks' mean cycles over the median launch).
json trace_timeline(const int64_t* words, const cuda::MiraPlan& plan, double median_ms) {
  const trace::Layout lay{cuda::kMiraTracePhases, cuda::kMiraTraceMarks};
  const double per_us = trace::cycles_per_us(words, lay, plan.grid, median_ms);
  const trace::RowsOverlap ro = trace::rows_overlap(words, lay, plan.grid, per_us);
  json j = {{"sms_with_two_blocks", ro.sms_with_two_blocks}, {"marks", ro.marks}, {"cycles_per_us", per_us}};
  j["rows_overlap"] = ro.overlap;
  j["rows_alone"] = {{"n", ro.n_alone}, {"mean_us", ro.alone_us}};
  j["rows_shared"] = {{"n", ro.n_shared}, {"mean_us", ro.shared_us}};
  // Barrier groups: a view group each with per-view counters, else the whole grid.
  const auto kind = static_cast<cuda::GridSync>(plan.grid_sync);
  std::vector<int> group(static_cast<size_t>(plan.grid), 0);
  if (cuda::grid_sync_per_view(kind) && plan.blocks_per_view > 0)
    for (int b = 0; b < plan.grid; ++b) group[static_cast<size_t>(b)] = b / plan.blocks_per_view;
  const trace::PassSpread ps = trace::pass_spread(words, lay, group, per_us);
  const auto spread = [](const trace::Spread& s) { return json::array({s.min, s.median, s.max}); };
  j["pass_spread"] = {{"passes", ps.passes},
                      {"barrier1_wait_us", spread(ps.barrier1)},
                      {"weights_us", spread(ps.weights)},
                      {"rows_us", spread(ps.rows)},
                      {"late_repeat", ps.late_repeat}};
  return j;
}

int run_time_cuda(const Args& a, int V, int64_t N, int64_t K, double tau, double beta, int iters) {
  const int reps = a.integer("reps", 50), warmup = a.integer("warmup", 5);
  constexpr int kSets = 4;
  const Device dev = Device::cuda(0);
  cudaDeviceProp prop{};
  MIRA_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  const std::string card = prop.name;
  const cudaStream_t stream = cuda::CudaContext::get().stream();

  std::vector<std::vector<Tensor>> host(kSets), f32(kSets), bf16(kSets);
  for (int s = 0; s < kSets; ++s) {
    host[s] = random_views(V, N, K, s + 1);
    for (const auto& v : host[s]) {
      f32[s].push_back(v.to(dev));
      bf16[s].push_back(f32[s].back().to(DType::BF16));
    }
  }
  std::vector<Tensor> targets;
  for (int v = 0; v < V; ++v) targets.push_back(Tensor::zeros({N, K}, DType::F32, dev));
  const auto ref = reference(host[0], tau, beta, iters);
  std::vector<Tensor> host_bf16;
  for (const auto& t : bf16[0]) host_bf16.push_back(t.to(DType::F32).to(Device::cpu()));
  const auto ref_bf16 = reference(host_bf16, tau, beta, iters);

  struct Variant {
    std::string name;
    cuda::MiraVariant variant;
    cuda::MiraCache cache;
    cuda::MiraSchedule schedule;
    int rows;
    bool bf16_logits;
    int cpt = 0;  // min columns per thread (0: the plan's choice)
    int bps = 0;  // blocks per SM (0: the plan's choice)
    int exact = 0;           // exact updates at the end (16-bit caches)
    int cluster = 0;         // a cluster per view (kernels/cuda/mira_cluster.cu): -1 the plan's size, > 0 that size
    bool mma = false;        // the cluster plan's f16 sweeps on tensor cores
    cuda::GridSync sync = cuda::GridSync::Auto;  // the default kernel's barriers after the first
    bool mma_rows = false;  // the f16 copy's updates on tensor cores (kernels/cuda/mira_mmarows.cu)
    bool stage = false;     // the workspace's rows staged through shared memory (cp.async)
    int smem_rows = -1;     // at most this many rows per block kept in shared memory (-1: all that fit)
    bool atomic = false;    // the column sums added by atomics, one barrier per pass
  };
  using MV = cuda::MiraVariant;
  using MC = cuda::MiraCache;
  using MS = cuda::MiraSchedule;
  std::vector<Variant> variants = {{"fused", MV::Fused, MC::F32, MS::Auto, 4, false},
                                   {"fused rows8", MV::Fused, MC::F32, MS::Auto, 8, false},
                                   {"fused bf16-cache", MV::Fused, MC::BF16, MS::Auto, 4, false},
                                   {"fused bf16-logits", MV::Fused, MC::F32, MS::Auto, 4, true},
                                   {"fused bf16-logits bf16-cache", MV::Fused, MC::BF16, MS::Auto, 4, true},
                                   {"per-pass", MV::PerPass, MC::F32, MS::Auto, 4, false},
                                   {"unfused", MV::Unfused, MC::F32, MS::Auto, 4, false}};
  // Block sizes: "fused" is the plan's choice (K = 3000: 8 columns per thread, 2 blocks per
  // SM); one block per SM with 4 columns per thread (the plan until 2026-11-26); 4 blocks of 16.
  variants.insert(variants.begin() + 1, {"fused cpt4 bps1", MV::Fused, MC::F32, MS::Auto, 4, false, 4, 1});
  variants.insert(variants.begin() + 2, {"fused cpt16 bps4", MV::Fused, MC::F32, MS::Auto, 4, false, 16, 4});
  // 16-bit working copies that put all of E on chip (f16: E * 2^15), with the last updates on
  // exact E recomputed from the logits (f16 + 3: about f32's error; docs/assignment.md).
  size_t at = 3;  // after the block sizes, in this order
  for (const Variant& v : std::vector<Variant>{
           {"fused f16-cache", MV::Fused, MC::F16, MS::Auto, 4, false},
           {"fused f16-cache exact3", MV::Fused, MC::F16, MS::Auto, 4, false, 0, 0, 3},
           {"fused f16-cache exact3 concurrent", MV::Fused, MC::F16, MS::Concurrent, 4, false, 0, 0, 3},
           {"fused bf16-cache exact5", MV::Fused, MC::BF16, MS::Auto, 4, false, 0, 0, 5},
           {"fused bf16-logits f16-cache exact3", MV::Fused, MC::F16, MS::Auto, 4, true, 0, 0, 3},
           {"per-pass f16-cache exact3", MV::PerPass, MC::F16, MS::Auto, 4, false, 0, 0, 3}}) {
    variants.insert(variants.begin() + static_cast<std::ptrdiff_t>(at++), v);
  }
  // A cluster of blocks per view, all of E in its shared memory (where it fits: the training
  // shapes; sm_90): two cluster barriers per pass, no grid barrier.
  at = 1;
  for (const Variant& v : std::vector<Variant>{
           {"fused cluster", MV::Fused, MC::F32, MS::Auto, 4, false, 0, 0, 0, -1},
           {"fused cluster8", MV::Fused, MC::F32, MS::Auto, 4, false, 0, 0, 0, 8},
           {"fused cluster16", MV::Fused, MC::F32, MS::Auto, 4, false, 0, 0, 0, 16},
           {"fused cluster bf16-logits", MV::Fused, MC::F32, MS::Auto, 4, true, 0, 0, 0, -1},
           // Row groups where one cluster cannot hold a view: N 4096 takes the f16 copy.
           {"fused cluster f16-cache exact3", MV::Fused, MC::F16, MS::Auto, 4, false, 0, 0, 3, -1},
           {"fused cluster8 f16-cache exact3", MV::Fused, MC::F16, MS::Auto, 4, false, 0, 0, 3, 8},
           {"fused cluster f16-cache exact1", MV::Fused, MC::F16, MS::Auto, 4, false, 0, 0, 1, -1},
           // Every update on the split copy (hi in shared memory + lo in L2, ~22 bits).
           {"fused cluster f16-cache exact30", MV::Fused, MC::F16, MS::Auto, 4, false, 0, 0, 30, -1},
           // The f16 copy's sweeps on tensor cores (mma.sync, the weights and row inverses as two
           // f16 halves).
           {"fused cluster f16-cache exact3 mma", MV::Fused, MC::F16, MS::Auto, 4, false, 0, 0, 3, -1, true},
           {"fused cluster f16-cache exact1 mma", MV::Fused, MC::F16, MS::Auto, 4, false, 0, 0, 1, -1, true},
           {"fused cluster f16-cache mma", MV::Fused, MC::F16, MS::Auto, 4, false, 0, 0, 0, -1, true}}) {
    variants.insert(variants.begin() + static_cast<std::ptrdiff_t>(at++), v);
  }
  at = 1;
  // A counter per view group (the views side by side never wait for each other; "stagger":
  // their passes alternate on each SM), where a block of each view shares every SM: 8 columns
  // per thread at two blocks per SM, side by side (the f16 copy's auto plan at N 4096). The
  // rows without a barrier tag take the plan's choice (GridSync::Auto: these counters where
  // they measured faster); "coop-sync" pins the cooperative barriers.
  for (Variant v :
       std::vector<Variant>{{"fused f16-cache", MV::Fused, MC::F16, MS::Auto, 4, false},
                            {"fused cpt8 bps2 concurrent", MV::Fused, MC::F32, MS::Concurrent, 4, false, 8, 2},
                            {"fused f16-cache exact3", MV::Fused, MC::F16, MS::Auto, 4, false, 0, 0, 3}}) {
    for (const auto& [sync, tag] :
         {std::pair{cuda::GridSync::Cooperative, " coop-sync"}, std::pair{cuda::GridSync::ViewCounter, " view-sync"},
          std::pair{cuda::GridSync::ViewCounterStagger, " view-sync stagger"}}) {
      Variant w = v;
      w.name += tag;
      w.sync = sync;
      variants.insert(variants.begin() + static_cast<std::ptrdiff_t>(at++), w);
    }
  }
  // The f16 copy's update in batches of 4 rows (batch_rows 8 at 8 columns; packed in
  // registers, update_rows): half the block reductions per row. Cooperative barriers (the
  // plan's choice) and the plain per-view counters.
  for (const auto& [sync, tag] :
       {std::pair{cuda::GridSync::Auto, ""}, std::pair{cuda::GridSync::ViewCounter, " view-sync"}}) {
    Variant w{std::string("fused f16-cache rows8") + tag, MV::Fused, MC::F16, MS::Auto, 8, false};
    w.sync = sync;
    variants.insert(variants.begin() + static_cast<std::ptrdiff_t>(at++), w);
  }
  // The workspace's rows staged through shared memory (MiraPlanOptions::stage_rows): the f16
  // copy with its automatic barriers (per-view counters) and cooperative ones; the f32 copy's
  // plan (views one after another) and its views side by side (staggered counters); the f16
  // copy's packed 4-row batches (a ring of 8 rows), cooperative and with per-view counters.
  for (auto [w, sync] : std::vector<std::pair<Variant, cuda::GridSync>>{
           {{"fused f16-cache stage", MV::Fused, MC::F16, MS::Auto, 4, false}, cuda::GridSync::Auto},
           {{"fused f16-cache stage coop-sync", MV::Fused, MC::F16, MS::Auto, 4, false}, cuda::GridSync::Cooperative},
           {{"fused stage", MV::Fused, MC::F32, MS::Auto, 4, false}, cuda::GridSync::Auto},
           {{"fused cpt8 bps2 concurrent stage", MV::Fused, MC::F32, MS::Concurrent, 4, false, 8, 2},
            cuda::GridSync::Auto},
           {{"fused f16-cache rows8 stage", MV::Fused, MC::F16, MS::Auto, 8, false}, cuda::GridSync::Auto},
           {{"fused f16-cache rows8 stage view-sync", MV::Fused, MC::F16, MS::Auto, 8, false},
            cuda::GridSync::ViewCounter}}) {
    w.stage = true;
    w.sync = sync;
    variants.insert(variants.begin() + static_cast<std::ptrdiff_t>(at++), w);
  }
  // What a row read from the workspace costs against one in shared memory: the f16 copy's
  // plan with at most 8 rows per block kept in shared memory (at N 4096 ~18 fit), the rest
  // from the workspace (L2), with and without staging.
  for (const bool stage : {false, true}) {
    Variant w{
        std::string("fused f16-cache") + (stage ? " stage" : "") + " smem8", MV::Fused, MC::F16, MS::Auto, 4, false};
    w.stage = stage;
    w.smem_rows = 8;
    variants.insert(variants.begin() + static_cast<std::ptrdiff_t>(at++), w);
  }
  // The column sums added by vector float atomics into one K-vector per view and pass
  // (MiraPlanOptions::atomic_sums): one grid barrier per pass and no reduction phase. The f16
  // copy with its automatic barriers (per-view counters) and cooperative ones; the f32 copy's
  // plan (views one after another) and its views side by side (staggered counters); the f16
  // copy's packed 4-row batches with cooperative barriers (their automatic ones) and per-view
  // counters.
  for (auto [w, sync] : std::vector<std::pair<Variant, cuda::GridSync>>{
           {{"fused f16-cache atomic", MV::Fused, MC::F16, MS::Auto, 4, false}, cuda::GridSync::Auto},
           {{"fused f16-cache atomic coop-sync", MV::Fused, MC::F16, MS::Auto, 4, false}, cuda::GridSync::Cooperative},
           {{"fused atomic", MV::Fused, MC::F32, MS::Auto, 4, false}, cuda::GridSync::Auto},
           {{"fused cpt8 bps2 concurrent atomic", MV::Fused, MC::F32, MS::Concurrent, 4, false, 8, 2},
            cuda::GridSync::Auto},
           {{"fused f16-cache rows8 atomic", MV::Fused, MC::F16, MS::Auto, 8, false}, cuda::GridSync::Auto},
           {{"fused f16-cache rows8 atomic view-sync", MV::Fused, MC::F16, MS::Auto, 8, false},
            cuda::GridSync::ViewCounter}}) {
    w.atomic = true;
    w.sync = sync;
    variants.insert(variants.begin() + static_cast<std::ptrdiff_t>(at++), w);
  }
  // The f16 copy's updates on tensor cores: one 16-byte load, two mma and four movmatrix per
  // 16 x 16 tile of E (kernels/cuda/mira_mmarows.cu), the plan's schedule and each pinned.
  at = 1;
  for (const auto& [tag, sched, bf16_in] :
       {std::tuple{"", MS::Auto, false}, std::tuple{" concurrent", MS::Concurrent, false},
        std::tuple{" sequential", MS::Sequential, false}, std::tuple{" bf16-logits", MS::Auto, true}}) {
    Variant v{std::string("fused f16-cache mma-rows") + tag, MV::Fused, MC::F16, sched, 4, bf16_in};
    v.mma_rows = true;
    variants.insert(variants.begin() + static_cast<std::ptrdiff_t>(at++), v);
  }
  if (V > 1) {
    variants.insert(variants.begin() + 1, {"fused concurrent", MV::Fused, MC::F32, MS::Concurrent, 4, false});
    variants.insert(variants.begin() + 2, {"fused sequential", MV::Fused, MC::F32, MS::Sequential, 4, false});
    // The block shapes and schedules the cost model chooses between, each pinned (the auto
    // plan until 2026-11-27 was "fused cpt8 bps2 sequential" for f32 and for f16).
    at = 3;
    for (const Variant& v : std::vector<Variant>{
             {"fused cpt8 bps2 sequential", MV::Fused, MC::F32, MS::Sequential, 4, false, 8, 2},
             {"fused cpt8 bps2 concurrent", MV::Fused, MC::F32, MS::Concurrent, 4, false, 8, 2},
             {"fused cpt4 bps1 sequential", MV::Fused, MC::F32, MS::Sequential, 4, false, 4, 1},
             {"fused cpt4 bps1 concurrent", MV::Fused, MC::F32, MS::Concurrent, 4, false, 4, 1},
             {"fused f16-cache exact3 cpt8 bps2 sequential", MV::Fused, MC::F16, MS::Sequential, 4, false, 8, 2, 3},
             {"fused f16-cache exact3 cpt8 bps2 concurrent", MV::Fused, MC::F16, MS::Concurrent, 4, false, 8, 2, 3},
             {"fused f16-cache exact3 cpt4 bps1 concurrent", MV::Fused, MC::F16, MS::Concurrent, 4, false, 4, 1, 3}}) {
      variants.insert(variants.begin() + static_cast<std::ptrdiff_t>(at++), v);
    }
  }
  int unknown_rows = 0;
  if (a.has("variants")) {
    // Keep only the named rows, in the order given. An unknown name gets a line of its own
    // listing the known rows and counts as a failure, but the known rows still run (a typo must
    // not cost a whole device call).
    std::vector<Variant> kept;
    std::string list = a.str("variants", "") + ",";
    json known = json::array();
    for (const Variant& v : variants) known.push_back(v.name);
    for (size_t pos = 0, comma; (comma = list.find(',', pos)) != std::string::npos; pos = comma + 1) {
      const std::string name = list.substr(pos, comma - pos);
      if (name.empty()) continue;
      auto it = std::find_if(variants.begin(), variants.end(), [&](const Variant& v) { return v.name == name; });
      if (it == variants.end()) {
        print({{"variant", name}, {"error", "--variants: no row of this name"}, {"rows", known}});
        ++unknown_rows;
        continue;
      }
      kept.push_back(*it);
    }
    MIRA_CHECK(!kept.empty(), "--variants: no row named; the rows are: ", known.dump());
    variants = kept;
  }
  if (!cuda::mira_fused_supports(static_cast<int>(K)))
    variants.erase(
        std::remove_if(variants.begin(), variants.end(), [](const Variant& v) { return v.variant != MV::Unfused; }),
        variants.end());

  // Bytes: "io" is what any implementation must move (logits read once, targets written once);
  // "passes" adds one read of E per pass and one write, as a streaming implementation would.
  const double elems = static_cast<double>(V) * N * K;
  double fused_ms = NAN;
  int failures = unknown_rows;
  for (const Variant& var : variants) {
    cuda::MiraProblem p;
    p.V = V, p.N = static_cast<int>(N), p.K = static_cast<int>(K);
    p.logits_bf16 = var.bf16_logits;
    p.tau_t = static_cast<float>(tau), p.beta = static_cast<float>(beta), p.iters = iters;
    for (int v = 0; v < V; ++v) p.targets[v] = targets[v].data<float>();
    json j = {{"variant", var.name}, {"device", card}, {"N", N}, {"K", K}, {"views", V}, {"iters", iters}};
    try {
      cuda::MiraPlanOptions po;
      po.cache = var.cache;
      po.exact_passes = var.exact;
      po.schedule = var.schedule;
      po.batch_rows = var.rows;
      po.min_cols_per_thread = var.cpt;
      po.blocks_per_sm = var.bps;
      po.cluster = var.cluster != 0;
      po.cluster_size = std::max(0, var.cluster);
      po.cluster_mma = var.mma;
      po.grid_sync = var.sync;
      po.mma_rows = var.mma_rows;
      po.stage_rows = var.stage;
      po.max_smem_rows = var.smem_rows;
      po.atomic_sums = var.atomic;
      const cuda::MiraPlan plan = cuda::mira_plan(p, var.variant, po);
      if (var.mma_rows && plan.mma_rows == 0) {
        j["skipped"] = "no tensor-core updates for this shape and device (K <= 3072, sm_80)";
        print(j);
        continue;
      }
      if (var.atomic && !plan.atomic_sums) {
        j["skipped"] =
            "no atomic column sums for this plan (8 columns per thread, 2-row batches or the f16 copy's packed 4, f32 "
            "logits)";
        print(j);
        continue;
      }
      if (var.cluster != 0 && plan.cluster == 0) {
        // Not this row's kernel: E does not fit one cluster (or the device has no clusters).
        j["skipped"] = "no cluster plan for this shape and device";
        print(j);
        continue;
      }
      Tensor ws = Tensor::empty({static_cast<int64_t>(plan.workspace_bytes)}, DType::U8, dev);
      auto run = [&](int s) {
        for (int v = 0; v < V; ++v) p.logits[v] = (var.bf16_logits ? bf16 : f32)[s][v].raw();
        if (var.variant == MV::PerPass) {
          for (int pass = 0; pass <= iters + 1; ++pass) cuda::mira_assign_pass_cuda(p, plan, pass, ws.raw(), stream);
        } else {
          cuda::mira_assign_cuda(p, plan, ws.raw(), stream);
        }
      };
      run(0);
      double err = 0;
      bool ok = true;
      // A 16-bit cache with exact updates at the end is held to f32's bounds (tests/test_mira_assign_gpu.cpp).
      // (Fewer exact updates, such as f16 with 1, are held to the 16-bit cache's bounds.)
      const bool rounded = var.cache != MC::F32 && var.exact < (var.cache == MC::F16 ? 3 : 5);
      const double atol = !rounded ? 2e-6 : var.cache == MC::BF16 ? 1e-3 : 2e-4;
      const double rtol = !rounded ? 2e-4 : var.cache == MC::BF16 ? 5e-2 : 1e-2;
      for (int v = 0; v < V; ++v) {
        const auto [e, good] = compare(targets[v].to_vector(), (var.bf16_logits ? ref_bf16 : ref)[v], atol, rtol);
        err = std::max(err, e);
        ok = ok && good;
      }
      float bad = 0;
      cuda::copy(&bad, Device::cpu(), cuda::mira_nonfinite_count(plan, ws.raw()), dev, sizeof(float), false);
      j["max_abs_err"] = err;
      j["valid"] = ok && bad == 0;
      if (var.variant != MV::Unfused) {
        j["plan"] = {{"grid", plan.grid},
                     {"block", plan.block},
                     {"cols_per_thread", plan.cpt},
                     {"views_side_by_side", plan.views_per_group},
                     {"rows_per_block", plan.rows_per_block},
                     {"smem_rows", plan.smem_rows},
                     {"smem_kb", plan.smem_bytes / 1024.0},
                     {"cache", plan.cache == MC::F32    ? "f32"
                               : plan.cache == MC::BF16 ? "bf16"
                                                        : "f16"},
                     {"exact_passes", plan.exact_passes},
                     {"cluster", plan.cluster},
                     {"cluster_groups", plan.cluster_groups},
                     {"cluster_mma", plan.cluster_mma},
                     {"mma_rows", plan.mma_rows},
                     {"stage_rows", plan.stage_rows},
                     {"atomic_sums", plan.atomic_sums},
                     {"grid_sync", cuda::grid_sync_name(static_cast<cuda::GridSync>(plan.grid_sync))},
                     {"workspace_mb", plan.workspace_bytes / 1048576.0}};
      }
      if (!(ok && bad == 0)) {
        ++failures;
        print(j);
        continue;
      }
      for (int w = 0; w < warmup; ++w) run(w % kSets);
      std::vector<cudaEvent_t> ev(2 * static_cast<size_t>(reps));
      for (auto& e : ev) MIRA_CUDA_CHECK(cudaEventCreate(&e));
      for (int r = 0; r < reps; ++r) {
        MIRA_CUDA_CHECK(cudaEventRecord(ev[2 * r], stream));
        run(r % kSets);
        MIRA_CUDA_CHECK(cudaEventRecord(ev[2 * r + 1], stream));
      }
      MIRA_CUDA_CHECK(cudaStreamSynchronize(stream));
      Timing t;
      for (int r = 0; r < reps; ++r) {
        float ms = 0;
        MIRA_CUDA_CHECK(cudaEventElapsedTime(&ms, ev[2 * r], ev[2 * r + 1]));
        t.ms.push_back(ms);
      }
      for (auto& e : ev) cudaEventDestroy(e);
      const double in_bytes = var.bf16_logits ? 2 : 4, e_bytes = var.cache == MC::F32 ? 4 : 2;
      const double io = elems * (in_bytes + 4), passes = io + elems * e_bytes * (iters + 2);
      j["median_ms"] = t.median();
      j["min_ms"] = t.min();
      j["gbs_io"] = io / (t.median() * 1e6);
      j["gbs_passes"] = passes / (t.median() * 1e6);
      if (var.name == "fused") fused_ms = t.median();
      if (a.has("trace") && var.variant == MV::Fused) {
        // One more launch with phase timing: each phase's mean over blocks of its share of the
        // block's cycles, times the median launch, in microseconds per launch. (Fused only: the
        // per-pass variant's launches would each overwrite the buffer.)
        const int64_t n = static_cast<int64_t>(plan.grid) * cuda::kMiraTraceWords;
        Tensor tr = Tensor::zeros({n}, DType::I64, dev);
        cuda::MiraPlan traced = plan;
        traced.trace = reinterpret_cast<unsigned long long*>(tr.raw());
        for (int v = 0; v < V; ++v) p.logits[v] = (var.bf16_logits ? bf16 : f32)[0][v].raw();
        cuda::mira_assign_cuda(p, traced, ws.raw(), stream);
        MIRA_CUDA_CHECK(cudaStreamSynchronize(stream));
        bool same = true;  // tracing must not change the targets
        for (int v = 0; v < V; ++v)
          same = same && compare(targets[v].to_vector(), (var.bf16_logits ? ref_bf16 : ref)[v], atol, rtol).second;
        j["trace_valid"] = same;
        if (!same) ++failures;
        const Tensor tr_host = tr.to(Device::cpu());
        const std::vector<double> cyc = tr_host.to(DType::F64).to_vector();
        static const char* const kNames[cuda::kMiraTracePhases] = {"first_pass", "weights", "update_rows", "last_pass",
                                                                  "barrier1",   "reduce",  "barrier2",    "total"};
        json tj;
        const auto word = [&](int b, int k) { return cyc[static_cast<size_t>(b) * cuda::kMiraTraceWords + k]; };
        for (int k = 0; k < cuda::kMiraTracePhases; ++k) {
          double share = 0;
          for (int b = 0; b < plan.grid; ++b) {
            const double tot = word(b, cuda::kMiraTracePhases - 1);
            if (tot > 0) share += word(b, k) / tot;
          }
          tj[kNames[k]] = share / plan.grid * t.median() * 1e3;
        }
        j["trace_us"] = tj;
        // Where the blocks ran: SMs used, the most blocks on one, and the SMs holding blocks of
        // more than one view group (side by side, a group is blocks_per_view consecutive blocks,
        // or every views_per_group-th block with interleaved groups).
        std::map<int, std::set<int>> groups_on;
        std::map<int, int> blocks_on;
        for (int b = 0; b < plan.grid; ++b) {
          const int sm = static_cast<int>(word(b, cuda::kMiraTracePhases));
          ++blocks_on[sm];
          if (plan.blocks_per_view > 0) groups_on[sm].insert(b / plan.blocks_per_view);
        }
        int most = 0, shared = 0;
        for (const auto& [sm, nb] : blocks_on) most = std::max(most, nb);
        for (const auto& [sm, gs] : groups_on) shared += gs.size() > 1 ? 1 : 0;
        j["trace_sms"] = {{"sms", blocks_on.size()}, {"most_blocks_on_one", most}, {"shared_by_view_groups", shared}};
        j["trace_timeline"] = trace_timeline(tr_host.data<int64_t>(), plan, t.median());
      }
    } catch (const Error& e) {
      j["error"] = e.what();
      ++failures;
    }
    print(j);
  }

  const json pt = run_pytorch(a.str("python", "python3"), find_pytorch_script(a), host[0], ref, tau, beta, iters, reps,
                              warmup, "cuda");
  print(pt);
  json summary = {{"summary", "mira_assign"},
                  {"device", card},
                  {"N", N},
                  {"K", K},
                  {"views", V},
                  {"iters", iters},
                  {"fused_ms", fused_ms},
                  {"target_ms", 0.3},
                  {"stretch_ms", 0.15}};
  if (pt.contains("median_ms")) {
    const double pms = pt["median_ms"].get<double>();
    summary["pytorch_ms"] = pms;
    summary["speedup"] = pms / fused_ms;
  }
  if (failures) summary["failures"] = failures;
  print(summary);
  return failures ? 1 : 0;
}

#endif

int run_time(const Args& a) {
  const Device dev = parse_device(a, true);
  const int V = a.integer("views", 2), iters = a.integer("iters", 30);
  const int64_t N = a.integer("n", 4096), K = a.integer("k", 3000);
  const double tau = a.num("tau", 0.225), beta = a.num("beta", 2.0 / 3.0);
  MIRA_CHECK(V >= 1 && V <= 4 && N >= 1 && K >= 1, "--views in 1..4, --n and --k >= 1");
  MIRA_CHECK(!(dev.is_cpu() && a.has("variants")),
             "--variants names CUDA rows; the CPU timing has one (add --device cuda)");
  if (dev.is_cpu()) return run_time_cpu(a, V, N, K, tau, beta, iters);
#ifdef MIRA_HAS_CUDA
  return run_time_cuda(a, V, N, K, tau, beta, iters);
#else
  return 1;
#endif
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const Args a = parse_args(argc, argv);
    if (a.has("help")) {
      std::printf("%s", kUsage);
      return 0;
    }
    if (a.has("convergence")) return run_convergence(a);
    if (a.has("probe-cluster")) {
#ifdef MIRA_HAS_CUDA
      if (cuda::device_count() > 0) return run_probe_cluster(a);
#endif
      MIRA_FAIL("--probe-cluster needs a CUDA device");
    }
    if (a.has("probe-sync")) {
#ifdef MIRA_HAS_CUDA
      if (cuda::device_count() > 0) return run_probe_sync(a);
#endif
      MIRA_FAIL("--probe-sync needs a CUDA device");
    }
    if (a.has("logits") && !a.has("time")) return run_tool(a);
    return run_time(a);
  } catch (const Error& e) {
    std::fprintf(stderr, "mira_assign: %s\n%s", e.what(), kUsage);
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "mira_assign: %s\n", e.what());
    return 1;
  }
}
