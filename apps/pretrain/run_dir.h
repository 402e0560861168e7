// The run directory of mira_pretrain:
//   RUN_DIR/config.json              resolved configuration (written atomically)
//   RUN_DIR/metrics.jsonl            one JSON object per logged step
//   RUN_DIR/checkpoints/step_N.safetensors
//   RUN_DIR/summary.json             written at the end
// and the training checkpoint: the model state (student + EMA teacher, torchvision names),
// the optimiser's momentum buffer and the training position in the metadata.
#pragma once

#include <cstdint>
#include <fstream>
#include <string>
#include <vector>

#include "engine/config.h"
#include "engine/optim.h"
#include "models/mira_model.h"

namespace mira::apps {

struct CheckpointInfo {
  std::string path;
  int64_t step = 0;
};

std::string checkpoint_dir(const std::string& run_dir);
std::string checkpoint_path(const std::string& run_dir, int64_t step);
// Checkpoints in the run, oldest first (by step in the file name; temp files ignored).
std::vector<CheckpointInfo> list_checkpoints(const std::string& run_dir);
// Deletes the temp files of checkpoint writes that a killed process left behind
// (step_N.safetensors.tmp.PID). Call before this run writes anything: only rank 0 of one run
// writes into the folder. Returns how many were removed.
int remove_stale_temp_files(const std::string& run_dir);
// Deletes every checkpoint except the newest and those whose step is a multiple of
// keep_every_steps (0: keep only the newest).
void prune_checkpoints(const std::string& run_dir, int64_t keep_every_steps);

struct TrainPosition {
  int64_t step = 0;   // optimiser steps done
  int64_t epoch = 0;  // epoch of the next step
  int64_t step_in_epoch = 0;
};

// Atomic (temp, fsync, rename). The config is stored so a resume can check it matches.
void save_training_checkpoint(const std::string& path, models::MiraModel& model, const Optimizer& opt,
                              const TrainPosition& pos, const Json& config);
// Loads everything saved above into model and optimiser (strict) and returns the position and
// the stored config.
TrainPosition load_training_checkpoint(const std::string& path, models::MiraModel& model, const Optimizer& opt,
                                       Json* config);

// metrics.jsonl: appends one line per call, flushed; on resume, lines with a step beyond the
// checkpoint are dropped first (the interrupted run logged steps the resumed run redoes).
class MetricsLog {
 public:
  MetricsLog(const std::string& path, int64_t keep_up_to_step);
  void write(const Json& line);

 private:
  std::string path_;
  std::ofstream out_;
};

}  // namespace mira::apps
