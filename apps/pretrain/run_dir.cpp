#include "apps/pretrain/run_dir.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <sstream>

#include "engine/safetensors.h"

namespace mira::apps {

namespace fs = std::filesystem;

std::string checkpoint_dir(const std::string& run_dir) { return (fs::path(run_dir) / "checkpoints").string(); }

std::string checkpoint_path(const std::string& run_dir, int64_t step) {
  char name[64];
  std::snprintf(name, sizeof name, "step_%09lld.safetensors", static_cast<long long>(step));
  return (fs::path(checkpoint_dir(run_dir)) / name).string();
}

std::vector<CheckpointInfo> list_checkpoints(const std::string& run_dir) {
  std::vector<CheckpointInfo> out;
  std::error_code ec;
  const fs::path dir = checkpoint_dir(run_dir);
  if (!fs::is_directory(dir, ec)) return out;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const std::string name = e.path().filename().string();
    const std::string prefix = "step_", suffix = ".safetensors";
    if (name.size() <= prefix.size() + suffix.size() || name.rfind(prefix, 0) != 0 ||
        name.compare(name.size() - suffix.size(), suffix.size(), suffix) != 0)
      continue;
    const std::string digits = name.substr(prefix.size(), name.size() - prefix.size() - suffix.size());
    if (digits.empty() || digits.find_first_not_of("0123456789") != std::string::npos) continue;
    out.push_back({e.path().string(), std::stoll(digits)});
  }
  std::sort(out.begin(), out.end(), [](const CheckpointInfo& a, const CheckpointInfo& b) { return a.step < b.step; });
  return out;
}

int remove_stale_temp_files(const std::string& run_dir) {
  int n = 0;
  std::error_code ec;
  const fs::path dir = checkpoint_dir(run_dir);
  if (!fs::is_directory(dir, ec)) return 0;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const std::string name = e.path().filename().string();
    if (name.rfind("step_", 0) == 0 && name.find(".safetensors.tmp.") != std::string::npos) {
      if (fs::remove(e.path(), ec)) ++n;
    }
  }
  return n;
}

void prune_checkpoints(const std::string& run_dir, int64_t keep_every_steps) {
  std::vector<CheckpointInfo> all = list_checkpoints(run_dir);
  for (size_t i = 0; i + 1 < all.size(); ++i) {
    if (keep_every_steps > 0 && all[i].step % keep_every_steps == 0) continue;
    std::error_code ec;
    fs::remove(all[i].path, ec);
  }
}

void save_training_checkpoint(const std::string& path, models::MiraModel& model, const Optimizer& opt,
                              const TrainPosition& pos, const Json& config) {
  models::NamedTensors tensors = model.state();
  tensors.emplace_back("optimizer.momentum", opt.momentum_buffer());
  std::map<std::string, std::string> meta{{"format", "mira-engine checkpoint v1"},
                                          {"step", std::to_string(pos.step)},
                                          {"epoch", std::to_string(pos.epoch)},
                                          {"step_in_epoch", std::to_string(pos.step_in_epoch)},
                                          {"config", config.dump()}};
  save_safetensors(path, tensors, meta);
}

TrainPosition load_training_checkpoint(const std::string& path, models::MiraModel& model, const Optimizer& opt,
                                       Json* config) {
  SafetensorsFile f = load_safetensors(path);
  auto meta = [&](const char* k) -> const std::string& {
    auto it = f.metadata.find(k);
    MIRA_CHECK(it != f.metadata.end(), path, ": not a training checkpoint (no '", k, "' in its metadata)");
    return it->second;
  };
  TrainPosition pos;
  try {
    pos.step = std::stoll(meta("step"));
    pos.epoch = std::stoll(meta("epoch"));
    pos.step_in_epoch = std::stoll(meta("step_in_epoch"));
  } catch (const std::logic_error&) {
    MIRA_FAIL(path, ": unreadable training position in its metadata");
  }
  if (config) {
    try {
      *config = Json::parse(meta("config"));
    } catch (const nlohmann::json::exception& e) {
      MIRA_FAIL(path, ": unreadable config in its metadata: ", e.what());
    }
  }
  auto mom = f.tensors.find("optimizer.momentum");
  MIRA_CHECK(mom != f.tensors.end(), path, ": no optimizer.momentum tensor");
  MIRA_CHECK(mom->second.shape() == opt.momentum_buffer().shape(), path, ": optimizer state of shape ",
             mom->second.shape().str(), " does not fit this model's ", opt.momentum_buffer().shape().str());
  Tensor momentum = mom->second;
  f.tensors.erase(mom);
  model.load_state(f);  // strict: every model tensor present, nothing unexpected
  opt.momentum_buffer().copy_(momentum);
  return pos;
}

}  // namespace mira::apps

namespace mira::apps {

MetricsLog::MetricsLog(const std::string& path, int64_t keep_up_to_step) : path_(path) {
  std::error_code ec;
  if (fs::exists(path, ec)) {
    std::ifstream in(path);
    std::ostringstream kept;
    bool dropped = false;
    for (std::string line; std::getline(in, line);) {
      if (line.empty()) continue;
      try {
        const Json j = Json::parse(line);
        if (j.contains("step") && j["step"].is_number() && j["step"].get<int64_t>() > keep_up_to_step) {
          dropped = true;
          continue;
        }
      } catch (const nlohmann::json::exception&) {
        dropped = true;  // a line cut by a crash
        continue;
      }
      kept << line << "\n";
    }
    if (dropped) write_file_atomic(path, kept.str());
  }
  out_.open(path, std::ios::app);
  MIRA_CHECK(out_.good(), "cannot open ", path, " for writing");
}

void MetricsLog::write(const Json& line) {
  out_ << line.dump() << "\n";
  out_.flush();
  MIRA_CHECK(out_.good(), "writing ", path_, " failed (disk full?)");
}

}  // namespace mira::apps
