// mira_pretrain: MIRA pre-training of a ResNet on an image dataset.
//
//   mira_pretrain --config FILE [--set key=value ...] [--data PATH] [--out RUN_DIR]
//                 [--resume auto|CKPT] [--device cpu|cuda[:i]] [--seed S] [--eval-data PATH]
//
// The run is observable (progress line, RUN_DIR/metrics.jsonl), interruptible (SIGINT/SIGTERM
// write a checkpoint and exit cleanly) and resumable (--resume auto continues from the newest
// checkpoint; on the CPU an interrupted and resumed run ends bit-identical to an uninterrupted
// one). A non-finite loss stops the run with an error and keeps the last good checkpoint; a
// failed checkpoint write (full disk) is an error that keeps the previous one.
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <iostream>

#include "apps/common/cli.h"
#include "apps/common/eval_data.h"
#include "apps/common/eval_transform.h"
#include "apps/common/features.h"
#include "apps/common/knn.h"
#include "apps/pretrain/pretrain_config.h"
#include "apps/pretrain/run_dir.h"
#include "data/dataset.h"
#include "data/loader.h"
#include "engine/comm_mpi.h"
#include "engine/cuda_backend.h"
#include "engine/safetensors.h"
#include "engine/schedule.h"
#include "kernels/cpu/parallel.h"
#include "models/mira_trainer.h"

using namespace mira;
using namespace mira::apps;
namespace fs = std::filesystem;

namespace {

volatile std::sig_atomic_t g_stop_signal = 0;

void on_signal(int sig) {
  g_stop_signal = sig;
  std::signal(sig, SIG_DFL);  // a second signal ends the process at once
}

// Splits "--set k=v" / "--set=k=v" out of argv (the parser takes one value per option).
std::vector<std::string> take_sets(int& argc, char** argv) {
  std::vector<std::string> sets;
  int w = 1;
  for (int r = 1; r < argc; ++r) {
    std::string a = argv[r];
    if (a == "--set") {
      MIRA_CHECK(r + 1 < argc, "--set needs key=value");
      sets.push_back(argv[++r]);
    } else if (a.rfind("--set=", 0) == 0) {
      sets.push_back(a.substr(6));
    } else {
      argv[w++] = argv[r];
    }
  }
  argc = w;
  return sets;
}

models::ResNetConfig backbone_config(const Json& m) {
  models::ResNetConfig c = models::ResNetConfig::from_name(m["arch"]);
  if (!m["widths"].empty()) {
    c.widths = m["widths"].get<std::vector<int>>();
    c.blocks = m["blocks"].get<std::vector<int>>();
  }
  c.cifar_stem = m["cifar_stem"];
  c.cifar_stem_padding = m["cifar_stem_padding"];
  c.zero_init_residual = m["zero_init_residual"];
  return c;
}

data::MultiCropRecipe recipe_from(const Json& d) {
  data::MultiCropRecipe r = data::MultiCropRecipe::by_name(d["recipe"]);
  const int locals = d["local_crops"];
  if (locals >= 0) {
    MIRA_CHECK(r.views.size() >= 2, "recipe ", r.name, " has fewer than two views");
    MIRA_CHECK(locals == 0 || r.views.size() > 2, "data.local_crops = ", locals, ": recipe '", r.name,
               "' has no local crop to repeat");
    const data::ViewSpec local = r.views.size() > 2 ? r.views[2] : r.views[0];
    r.views.resize(2);
    for (int i = 0; i < locals; ++i) r.views.push_back(local);
  }
  const std::string interp = d["interp"];
  if (!interp.empty()) {
    for (auto& v : r.views) v.interp = interp == "bilinear" ? data::Interp::Bilinear : data::Interp::Bicubic;
  }
  if (!d["mean"].empty()) {
    for (int c = 0; c < 3; ++c) {
      r.mean[c] = d["mean"][c].get<float>();
      r.std[c] = d["std"][c].get<float>();
    }
  }
  return r;
}

std::unique_ptr<data::Dataset> open_train_data(const Json& d) {
  const std::string path = d["path"];
  MIRA_CHECK(!path.empty(), "no training data: give --data PATH or set data.path");
  int64_t last_report = 0;
  auto progress = [&](int64_t n) {
    if (n - last_report >= 10000) {
      std::fprintf(stderr, "\rscanning %s: %lld files", path.c_str(), static_cast<long long>(n));
      last_report = n;
    }
  };
  auto ds = data::open_dataset(path, data::parse_format(d["format"]), data::Split::Train, progress);
  if (last_report) std::fprintf(stderr, "\n");
  const int64_t subset = d["train_subset"];
  if (subset > 0 && subset < ds->size()) {  // the first `subset` samples
    std::vector<int64_t> rows(static_cast<size_t>(subset));
    for (int64_t i = 0; i < subset; ++i) rows[i] = i;
    ds = data::subset_dataset(*ds, rows);
  }
  return ds;
}

std::string fmt_duration(double s) {
  char b[32];
  if (s >= 3600) {
    std::snprintf(b, sizeof b, "%dh%02dm", int(s / 3600), int(std::fmod(s, 3600) / 60));
  } else {
    std::snprintf(b, sizeof b, "%dm%02ds", int(s / 60), int(std::fmod(s, 60)));
  }
  return b;
}

// End-of-run k-NN (DINO protocol) of the EMA backbone, and optionally of the same network at
// its initialisation and of raw pixels, with the train split of the training data as the bank.
Json end_of_run_knn(const Json& cfg, models::MiraModel& model, const data::MultiCropRecipe& recipe, Device device) {
  const Json& e = cfg["eval"];
  const std::string fmt = cfg["data"]["format"];
  auto full_bank = open_split(cfg["data"]["path"], fmt, data::Split::Train, "data.path");
  auto test = open_split(e["test_data"], fmt, data::Split::Test, "eval.test_data");
  // A class-balanced fraction of the train split as the bank (all of it by default).
  auto bank = data::subset_dataset(
      *full_bank, select_subset(dataset_labels(*full_bank), e["bank_fraction"], cfg["train"]["seed"], ""));
  const EvalTransform tf = EvalTransform::from_recipe(recipe, *bank);
  std::vector<int64_t> ytr = dataset_labels(*bank), yte = dataset_labels(*test);
  KnnConfig kc;
  kc.ks = {e["knn_k"].get<int>()};
  kc.temperature = e["knn_t"];
  kc.num_classes = std::max(bank->num_classes(), test->num_classes());
  const int64_t batch = e["batch_size"];
  const int fdim = model.config().backbone.feature_dim();
  auto evaluate = [&](models::MiraModel& m, const std::string& what) {
    auto fn = [&](const Tensor& x) { return m.features(x.to(device), true); };
    Tensor ftr = extract_features(fn, fdim, *bank, tf, batch, what + " bank");
    Tensor fte = extract_features(fn, fdim, *test, tf, batch, what + " test");
    return knn_classify(ftr, ytr, fte, yte, kc).scores[0];
  };
  Json out{{"k", kc.ks[0]}, {"temperature", kc.temperature}, {"bank", int64_t(ytr.size())},
           {"test", int64_t(yte.size())}};
  auto record = [&](const char* name, const KnnScore& s) {
    out[name] = {{"top1", s.top1}, {"top5", s.top5}};
    std::printf("k-NN %-12s top-1 %6.2f %%  top-5 %6.2f %%\n", name, s.top1, s.top5);
  };
  record("mira", evaluate(model, "EMA backbone"));
  if (e["baselines"].get<bool>()) {
    models::MiraModel fresh(model.config(), device, model.student().dtype());
    fresh.init(cfg["train"]["seed"]);
    record("random_init", evaluate(fresh, "random init"));
    if (bank->in_memory()) {
      std::vector<double> mean, sd;
      pixel_mean_std(*bank, mean, sd);
      record("pixels", knn_classify(pixel_features(*bank, mean, sd), ytr, pixel_features(*test, mean, sd), yte, kc)
                           .scores[0]);
    }
  }
  return out;
}

int run(int argc, char** argv) {
  std::vector<std::string> sets = take_sets(argc, argv);
  ArgParser args("mira_pretrain", "MIRA self-supervised pre-training (Lee et al., NeurIPS 2022).");
  args.option("config", "JSON preset (configs/*.json); keys not given keep their defaults")
      .option("data", "training data: ImageFolder tree, IDX or CIFAR directory (sets data.path)")
      .option("out", "run directory for config, metrics and checkpoints", "runs/mira")
      .option("resume", "auto (newest checkpoint in the run directory, if any) or a checkpoint file")
      .option("device", "cpu, cuda or cuda:N (sets train.device)")
      .option("seed", "random seed (sets train.seed)")
      .option("eval-data", "test split for a k-NN evaluation at the end (sets eval.test_data)");
  if (!args.parse(argc, argv)) return 0;

  // Configuration: defaults < preset < --set < dedicated flags.
  const Json& schema = pretrain_schema();
  Json cfg = schema;
  if (args.has("config")) cfg = merge_config(schema, cfg, read_json_file(args.str("config")), args.str("config"));
  apply_overrides(cfg, schema, sets);
  if (args.has("data")) cfg["data"]["path"] = args.str("data");
  if (args.has("device")) cfg["train"]["device"] = args.str("device");
  if (args.has("seed")) cfg["train"]["seed"] = parse_int(args.str("seed"), "--seed");
  if (args.has("eval-data")) cfg["eval"]["test_data"] = args.str("eval-data");
  validate_pretrain_config(cfg);

  // Multi-process runs (mpirun / srun): rank 0 writes the run directory and prints; every rank
  // reads the same checkpoints.
  Communicator& comm = world_comm(cfg["train"]["comm_timeout_s"]);
  const bool lead = comm.rank() == 0;
  if (comm.world_size() > 1) {
    // Every rank must run the same recipe: compare each section's digest over the ranks
    // before anything is written.
    const auto digests = config_digests(cfg);
    std::vector<double> d;
    for (const auto& s : digests) d.push_back(s.second);
    const auto range = comm.min_max(d);
    std::string differ;
    for (size_t i = 0; i < digests.size(); ++i)
      if (range[i].first != range[i].second) differ += (differ.empty() ? "" : ", ") + digests[i].first;
    MIRA_CHECK(differ.empty(), "the ", comm.world_size(), " ranks were started with different settings in: ", differ,
               " (every rank needs the same --config and --set; only data.path, data.threads, data.prefetch, "
               "train.comm_timeout_s and train.max_steps may differ)");
  }
  const std::string run_dir = args.str("out");
  if (lead) {
    std::error_code ec;
    MIRA_CHECK(!fs::exists(run_dir, ec) || fs::is_directory(run_dir, ec), "--out '", run_dir,
               "' exists and is not a folder (the run directory holds config, metrics and checkpoints)");
    fs::create_directories(checkpoint_dir(run_dir), ec);
    MIRA_CHECK(!ec, "--out: cannot create the run directory '", checkpoint_dir(run_dir), "': ", ec.message());
    if (const int stale = remove_stale_temp_files(run_dir)) {
      std::fprintf(stderr, "removed %d unfinished checkpoint file(s) left by an interrupted write\n", stale);
    }
    write_file_atomic((fs::path(run_dir) / "config.json").string(), cfg.dump(2) + "\n");
  }

  Device device = Device::parse(cfg["train"]["device"]);
  if (device.is_cuda() && comm.world_size() > 1 && cfg["train"]["device"] == "cuda") {
    // One GPU per process: the launcher's local rank picks it.
    for (const char* v : {"OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID", "MPI_LOCALRANKID"}) {
      if (const char* e = std::getenv(v)) {
        device = Device::cuda(std::atoi(e));
        break;
      }
    }
  }
  if (device.is_cuda()) {
    MIRA_CHECK(cuda::built_with_cuda(), "train.device is ", device.str(), " but this build has no CUDA backend");
    MIRA_CHECK(cuda::device_count() > device.index, "train.device is ", device.str(), " but ",
               cuda::device_count(), " CUDA devices are visible");
    cuda::set_device(device.index);
  }
  const int64_t global_batch = cfg["train"]["batch_size"];
  MIRA_CHECK(global_batch % comm.world_size() == 0, "train.batch_size ", global_batch, " is not divisible by ",
             comm.world_size(), " ranks");

  // Data.
  auto dataset = open_train_data(cfg["data"]);
  data::MultiCropRecipe recipe = recipe_from(cfg["data"]);
  data::LoaderConfig lc;
  lc.batch_size = global_batch / comm.world_size();
  lc.threads = cfg["data"]["threads"];
  lc.prefetch = cfg["data"]["prefetch"];
  lc.decode.max_pixels = cfg["data"]["max_image_pixels"].get<int64_t>();
  lc.sampler.seed = cfg["train"]["seed"];
  lc.sampler.rank = comm.rank();
  lc.sampler.world = comm.world_size();
  lc.sampler.drop_last = true;
  lc.sampler.batch_size = lc.batch_size;
  // Augmentation: on the GPU when training there (auto), decoding always on the CPU threads.
  const std::string aug_dev = cfg["data"]["augment_device"];
  MIRA_CHECK(aug_dev != "gpu" || device.is_cuda(), "data.augment_device is gpu but train.device is ", device.str());
  lc.gpu_augment = device.is_cuda() && aug_dev != "cpu";
  lc.device = device.index;
  const bool mixed_bf16 = cfg["train"]["dtype"] == "bf16";
  lc.gpu_dtype = mixed_bf16 ? DType::BF16 : DType::F32;  // what the backbone computes in
  lc.pinned = device.is_cuda() && !lc.gpu_augment;
  data::Loader loader(*dataset, recipe, lc);
  loader.start_epoch(0);
  const int64_t steps_per_epoch = loader.batches_per_epoch();
  MIRA_CHECK(steps_per_epoch > 0, "the dataset (", dataset->size(), " images) is smaller than one batch of ",
             global_batch);

  // Model, optimiser, schedules.
  models::MiraModelConfig mc;
  mc.backbone = backbone_config(cfg["model"]);
  mc.head = models::HeadConfig{cfg["model"]["proj_hidden"], cfg["model"]["proj_out"], cfg["model"]["prototypes"]};
  const DType dtype = cfg["train"]["dtype"] == "f64" ? DType::F64 : DType::F32;  // parameters
  MIRA_CHECK(dtype == DType::F32 || device.is_cpu(), "train.dtype f64 is for CPU reference runs only");
  MIRA_CHECK(!mixed_bf16 || device.is_cuda(), "train.dtype bf16 needs train.device cuda (the CPU kernels are f32 / f64)");
  models::MiraModel model(mc, device, dtype);
  if (mixed_bf16) model.set_compute_dtype(DType::BF16);
  model.init(cfg["train"]["seed"]);
  const Json& o = cfg["optim"];
  OptimConfig oc{o["name"], o["momentum"], o["weight_decay"], o["eta"]};
  const Json& mj = cfg["mira"];
  models::MiraStepConfig sc{mj["tau_s"], mj["tau_t"], mj["iters"]};
  sc.group_crops = cfg["train"]["group_crops"];
  sc.assign.working_copy = parse_assign_working_copy(mj["working_copy"]);
  sc.assign.exact_passes = mj["exact_passes"];
  sc.assign.cluster_plan = mj["assign_plan"] == "cluster" || mj["assign_plan"] == "cluster-mma";
  sc.assign.cluster_mma = mj["assign_plan"] == "cluster-mma";
  sc.assign.mma_rows = mj["assign_plan"] == "mma-rows";
  models::MiraTrainer trainer(model, oc, sc, comm);

  const int64_t epochs = cfg["train"]["epochs"];
  const int64_t total_steps = epochs * steps_per_epoch;
  LrSchedule lr;
  lr.base_lr = o["lr"].get<double>() * (o["scale_lr_by_batch"].get<bool>() ? double(global_batch) / 256.0 : 1.0);
  lr.warmup_start_lr = o["warmup_start_lr"];
  lr.min_lr = o["min_lr"];
  lr.warmup_steps = static_cast<int64_t>(std::llround(o["warmup_epochs"].get<double>() * steps_per_epoch));
  lr.steps_per_epoch = steps_per_epoch;
  lr.total_steps = total_steps;
  const CosineRamp beta{mj["beta_initial"], mj["beta_final"], total_steps};
  const CosineRamp ema{mj["ema_initial"], mj["ema_final"], total_steps};
  const int64_t freeze_epochs = mj["freeze_prototypes_epochs"];

  // Resume.
  TrainPosition pos;
  Json saved;  // the configuration stored in the checkpoint we resume from
  if (args.has("resume")) {
    std::string ckpt = args.str("resume");
    if (ckpt == "auto") {
      auto all = list_checkpoints(run_dir);
      ckpt.clear();
      // Newest first; a checkpoint that does not load (cut short by a crash outside our
      // atomic write, or damaged later) is reported and the previous one is tried.
      std::vector<std::string> damaged;
      std::string first_error;
      for (auto it = all.rbegin(); it != all.rend() && ckpt.empty(); ++it) {
        try {
          pos = load_training_checkpoint(it->path, model, trainer.optimizer(), &saved);
          ckpt = it->path;
        } catch (const Error& e) {
          std::fprintf(stderr, "warning: skipping checkpoint %s: %s\n", it->path.c_str(), e.what());
          damaged.push_back(it->path);
          if (first_error.empty()) first_error = e.what();
        }
      }
      // Checkpoints, none of which loads: starting from scratch would overwrite the run's
      // metrics and, at the first save, prune those files. Leave everything as it is.
      MIRA_CHECK(!ckpt.empty() || damaged.empty(), "--resume auto: none of the ", damaged.size(), " checkpoint(s) in ",
                 checkpoint_dir(run_dir), " loads (the newest: ", first_error,
                 "). Nothing was changed; resume from a copy you trust with --resume PATH, or move them away to "
                 "start this run directory from scratch");
      // All ranks must continue from the same step (a read error on one node only would split
      // the run); the reduction also orders the renames below after every rank's reads.
      const auto [oldest, newest] = comm.min_max({static_cast<double>(pos.step)})[0];
      MIRA_CHECK(oldest == newest, "--resume auto: the ranks loaded different checkpoints (steps ", oldest, " to ",
                 newest, "): a checkpoint that only some nodes can read");
      // Damaged checkpoints newer than the one resumed from are kept, renamed out of the way:
      // left as step_*.safetensors they would count as the newest when this run prunes.
      if (lead)
        for (const std::string& d : damaged) {
          std::error_code ec;
          fs::rename(d, d + ".damaged", ec);
          std::fprintf(stderr, "warning: %s renamed to %s.damaged%s\n", d.c_str(), d.c_str(),
                       ec ? (" failed: " + ec.message()).c_str() : "");
        }
      if (ckpt.empty() && lead) std::printf("no checkpoint in %s: starting from scratch\n", run_dir.c_str());
    } else {
      pos = load_training_checkpoint(ckpt, model, trainer.optimizer(), &saved);
    }
    if (!ckpt.empty() && lead) {
      std::printf("resuming from %s at step %lld (epoch %lld)\n", ckpt.c_str(), static_cast<long long>(pos.step),
                  static_cast<long long>(pos.epoch));
      // A resumed run continues exactly only with the same recipe: say which settings changed.
      for (const char* section : {"model", "data", "optim", "mira", "train"}) {
        if (!saved.contains(section)) continue;
        for (auto it = cfg[section].begin(); it != cfg[section].end(); ++it) {
          const std::string key = std::string(section) + "." + it.key();
          if (key == "train.max_steps" || key == "data.threads" || key == "data.prefetch" || key == "data.path" ||
              key == "data.max_image_pixels" ||
              key == "train.log_every" || key == "train.checkpoint_every" || key == "train.comm_timeout_s" ||
              key == "train.group_crops")
            continue;
          if (!saved[section].contains(it.key()) || saved[section][it.key()] != it.value()) {
            std::fprintf(stderr, "warning: %s is %s now but was %s in the checkpoint's run\n", key.c_str(),
                         it.value().dump().c_str(),
                         saved[section].contains(it.key()) ? saved[section][it.key()].dump().c_str() : "absent");
          }
        }
      }
    }
  }
  std::unique_ptr<MetricsLog> metrics;
  if (lead) metrics = std::make_unique<MetricsLog>((fs::path(run_dir) / "metrics.jsonl").string(), pos.step);

  std::signal(SIGINT, on_signal);
  std::signal(SIGTERM, on_signal);
  const int64_t ckpt_every = cfg["train"]["checkpoint_every"];
  const int64_t keep_every = cfg["train"]["keep_every"];
  const int64_t log_every = cfg["train"]["log_every"];
  const int64_t max_steps = cfg["train"]["max_steps"];
  const double log_k = std::log(double(mc.head.prototypes));
  if (lead) {
    // On the CPU, the compute threads of each process (MIRA_CPU_THREADS, kernels/cpu/parallel.h).
    const std::string threads =
        device.is_cuda() ? "" : " (" + std::to_string(cpu::parallel_workers()) + " compute threads each)";
    std::printf(
        "MIRA pre-training: %s, %lld images, %zu crops of %s, batch %lld, %lld epochs x %lld steps, %s on %s x %d "
        "process(es)%s\n",
        mc.backbone.arch.c_str(), static_cast<long long>(dataset->size()), recipe.views.size(), recipe.name.c_str(),
        static_cast<long long>(global_batch), static_cast<long long>(epochs), static_cast<long long>(steps_per_epoch),
        oc.name.c_str(), device.str().c_str(), comm.world_size(), threads.c_str());
  }

  int64_t step = pos.step, saved_step = pos.step;
  TrainPosition here = pos;
  auto save = [&]() {
    if (lead) {
      save_training_checkpoint(checkpoint_path(run_dir, step), model, trainer.optimizer(), here, cfg);
      prune_checkpoints(run_dir, keep_every * std::max<int64_t>(ckpt_every, 1));
    }
    saved_step = step;
  };
  using Clock = std::chrono::steady_clock;
  const auto t_start = Clock::now();
  auto t_log = t_start;
  int64_t images_since_log = 0, steps_this_run = 0;
  // Host time blocked waiting for the loader's next batch: the input pipeline's share of a step.
  double data_wait_since_log = 0;
  double last_loss = NAN;
  bool collapse_warned = false;
  bool stopped = false, interrupted = false;
  for (int64_t epoch = pos.epoch; epoch < epochs && !stopped; ++epoch) {
    loader.start_epoch(epoch);
    data::Batch batch;
    int64_t k = 0;
    auto next_batch = [&] {
      const auto t0 = Clock::now();
      const bool got = loader.next(batch);
      data_wait_since_log += std::chrono::duration<double>(Clock::now() - t0).count();
      return got;
    };
    while (next_batch()) {
      if (epoch == pos.epoch && k < pos.step_in_epoch) {  // resumed: these batches are done
        ++k;
        continue;
      }
      std::vector<Tensor> views;
      for (const Tensor& v : batch.views) {
        if (v.device() == device && (v.dtype() == dtype || v.dtype() == model.compute_dtype()))
          views.push_back(v);  // GPU loader output, or CPU views for a CPU run
        else if (device.is_cuda())
          views.push_back(v.to(device));  // f32 from pinned memory: an async copy; the model casts on the GPU
        else
          views.push_back(v.to(dtype));  // f64 reference runs
      }
      models::MiraStepSchedule s{lr.at(step), beta.at(step), ema.at(step), epoch < freeze_epochs};
      const bool log_now = (step + 1) % log_every == 0;
      models::MiraStepStats st;
      try {
        st = trainer.step(views, s, log_now);
      } catch (const Error& e) {
        MIRA_FAIL("step ", step + 1, " (epoch ", epoch, "): ", e.what(), "; the last good checkpoint is ",
                  saved_step > 0 ? checkpoint_path(run_dir, saved_step) : std::string("(none yet)"));
      }
      ++step;
      ++k;
      ++steps_this_run;
      last_loss = st.loss;
      images_since_log += global_batch;
      here = TrainPosition{step, k == steps_per_epoch ? epoch + 1 : epoch, k == steps_per_epoch ? 0 : k};
      if (log_now && lead) {
        const auto now = Clock::now();
        const double dt = std::chrono::duration<double>(now - t_log).count();
        const double ips = dt > 0 ? images_since_log / dt : 0;
        const double elapsed = std::chrono::duration<double>(now - t_start).count();
        const double eta = steps_this_run > 0 ? elapsed / steps_this_run * (total_steps - step) : 0;
        const double steps_since_log = static_cast<double>(images_since_log / global_batch);
        const double step_ms = steps_since_log > 0 ? 1e3 * dt / steps_since_log : 0;
        const double data_ms = steps_since_log > 0 ? 1e3 * data_wait_since_log / steps_since_log : 0;
        Json line{{"step", step},
                  {"epoch", epoch},
                  {"loss", st.loss},
                  {"lr", s.lr},
                  {"beta", s.beta},
                  {"ema_momentum", s.ema_momentum},
                  {"target_entropy", st.target_entropy},
                  {"marginal_entropy", st.marginal_entropy},
                  {"clusters_in_use", st.clusters_in_use},
                  {"kkt_residual", st.kkt_residual},
                  {"images_per_s", ips},
                  {"step_ms", step_ms},
                  {"data_wait_ms", data_ms},
                  {"time_s", elapsed}};
        if (device.is_cuda()) line["gpu_memory_bytes"] = cuda::memory_stats(device.index).peak_allocated_bytes;
        metrics->write(line);
        std::printf("epoch %lld/%lld step %lld/%lld loss %.4f lr %.4f beta %.4f ema %.5f H(T) %.3f H(wbar) %.3f/%.3f "
                    "clusters %d img/s %.0f (data wait %.0f of %.0f ms/step) ETA %s\n",
                    static_cast<long long>(epoch + 1), static_cast<long long>(epochs), static_cast<long long>(step),
                    static_cast<long long>(total_steps), st.loss, s.lr, s.beta, s.ema_momentum, st.target_entropy,
                    st.marginal_entropy, log_k, st.clusters_in_use, ips, data_ms, step_ms, fmt_duration(eta).c_str());
        std::fflush(stdout);
        if (!collapse_warned && st.marginal_entropy < 0.5 * log_k) {
          std::fprintf(stderr,
                       "warning: possible collapse at step %lld: marginal entropy %.3f is below half of log K = %.3f "
                       "(%d clusters in use)\n",
                       static_cast<long long>(step), st.marginal_entropy, log_k, st.clusters_in_use);
          collapse_warned = true;
        }
        t_log = now;
        images_since_log = 0;
        data_wait_since_log = 0;
      }
      if (ckpt_every > 0 && step % ckpt_every == 0) save();
      // Every rank must stop at the same step: agree on whether any rank got a signal.
      double stop_signal = g_stop_signal;
      if (comm.world_size() > 1) comm.allreduce_max(&stop_signal, 1);
      if (stop_signal != 0) {
        save();
        if (lead) {
          std::printf("stopped by signal %d at step %lld: checkpoint %s written; continue with --resume auto\n",
                      int(stop_signal), static_cast<long long>(step), checkpoint_path(run_dir, step).c_str());
        }
        stopped = interrupted = true;
        break;
      }
      if (max_steps > 0 && step >= max_steps) {
        stopped = true;
        break;
      }
    }
  }
  if (saved_step != step) save();
  const double seconds = std::chrono::duration<double>(Clock::now() - t_start).count();
  Json summary{{"steps", step},
               {"steps_this_run", steps_this_run},
               {"final_loss", last_loss},
               {"seconds_this_run", seconds},
               {"images_per_s", seconds > 0 ? steps_this_run * global_batch / seconds : 0.0},
               {"skipped_files", loader.skipped_files()},
               {"checkpoint", checkpoint_path(run_dir, step)},
               {"complete", step >= total_steps}};
  if (!lead) return 0;
  if (!interrupted) {  // the end of the run, or of the steps asked for (train.max_steps)
    if (!cfg["eval"]["test_data"].get<std::string>().empty()) {
      Json knn = end_of_run_knn(cfg, model, recipe, device);
      write_file_atomic((fs::path(run_dir) / "knn.json").string(), knn.dump(2) + "\n");
      summary["knn"] = knn;
    }
  }
  write_file_atomic((fs::path(run_dir) / "summary.json").string(), summary.dump(2) + "\n");
  if (steps_this_run == 0) {
    std::printf("the run was already at step %lld of %lld: nothing to train; checkpoint %s\n",
                static_cast<long long>(step), static_cast<long long>(total_steps), checkpoint_path(run_dir, step).c_str());
  } else {
    std::printf("done: %lld steps, final loss %.4f, checkpoint %s\n", static_cast<long long>(step), last_loss,
                checkpoint_path(run_dir, step).c_str());
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const int rc = run_main([&] { return run(argc, argv); });
  if (rc != 0) abort_world(rc);  // a fatal error on one rank stops all of them
  return rc;
}
