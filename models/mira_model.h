// The MIRA networks: the online student (backbone + projector + prototypes) and the EMA
// teacher (backbone + projector), each in one ParamStore. The teacher's store is declared in
// the same order as the student's leading part, so the EMA update is one pass over the
// teacher's flat buffer against the same-length prefix of the student's (BN running
// statistics live in separate buffers and are never averaged: the teacher keeps its own).
// The teacher uses the student's prototypes.
#pragma once

#include <memory>

#include "models/checkpoint.h"
#include "models/heads.h"
#include "models/resnet.h"

namespace mira::models {

struct MiraModelConfig {
  ResNetConfig backbone = ResNetConfig::resnet50();
  HeadConfig head;
};

class MiraModel {
 public:
  explicit MiraModel(const MiraModelConfig& cfg, Device device = Device::cpu(), DType dtype = DType::F32);
  // Seeded init of the student; the teacher starts as an exact copy (parameters and buffers).
  void init(uint64_t seed);
  // teacher := student (parameters and BN buffers), as at the start of training.
  void reset_teacher();
  // Every BatchNorm of student and teacher synchronises its statistics over comm's ranks.
  // equal_rows: the caller guarantees every rank passes batches of the same size (MiraTrainer
  // checks it every step), which spares SyncBN a reduction of the row count per layer.
  void set_comm(Communicator* comm, bool equal_rows = false);

  // Mixed precision: backbone and projector compute in `dtype` (bf16 on CUDA; f32 under f64
  // parameters on the CPU, which tests the plumbing), the parameters, BN statistics, the
  // prototypes, logits and everything after stay in the parameters' dtype. Default: the
  // parameters' dtype (no casts at all).
  void set_compute_dtype(DType dtype) { compute_ = dtype; }
  DType compute_dtype() const { return compute_; }

  // Student logits (N, K) for one crop batch (its own BN batch statistics). groups > 1: x holds
  // that many crop batches of one size, consecutive along N, in one forward, each with its own
  // BN batch statistics (the same as one call per batch, in order).
  Tensor student_logits(const Tensor& x, int groups = 1);
  // Teacher logits (N, K): train-mode BN (batch statistics, own running stats), no gradient.
  Tensor teacher_logits(const Tensor& x, int groups = 1);
  // Pooled features of the teacher's or the student's backbone in eval mode, no gradient.
  Tensor features(const Tensor& x, bool teacher);

  // teacher = m * teacher + (1 - m) * student over parameters only.
  void ema_update(double m);

  ParamStore& student() { return *student_; }
  ParamStore& teacher() { return *teacher_; }
  std::vector<BatchNorm*> student_bns();
  std::vector<BatchNorm*> teacher_bns();
  const MiraModelConfig& config() const { return cfg_; }

  // Checkpoint tensors: student under "backbone.", "projector.", "prototypes."; teacher under
  // "ema.backbone.", "ema.projector.".
  NamedTensors state();
  // Loads a full MIRA checkpoint (strict: everything present, nothing unexpected).
  void load_state(const SafetensorsFile& f);

 private:
  MiraModelConfig cfg_;
  DType dtype_, compute_;
  std::unique_ptr<ParamStore> student_, teacher_;
  std::unique_ptr<ResNet> s_backbone_, t_backbone_;
  std::unique_ptr<Projector> s_proj_, t_proj_;
  std::unique_ptr<Prototypes> protos_;
};

}  // namespace mira::models
