#include "models/mira_model.h"

#include "engine/optim.h"

namespace mira::models {

MiraModel::MiraModel(const MiraModelConfig& cfg, Device device, DType dtype)
    : cfg_(cfg), dtype_(dtype), compute_(dtype) {
  student_ = std::make_unique<ParamStore>(device, dtype);
  teacher_ = std::make_unique<ParamStore>(device, dtype);
  s_backbone_ = std::make_unique<ResNet>(*student_, cfg.backbone, "backbone.");
  s_proj_ = std::make_unique<Projector>(*student_, cfg.backbone.feature_dim(), cfg.head, "projector.");
  protos_ = std::make_unique<Prototypes>(*student_, cfg.head, "prototypes.");
  t_backbone_ = std::make_unique<ResNet>(*teacher_, cfg.backbone, "backbone.");
  t_proj_ = std::make_unique<Projector>(*teacher_, cfg.backbone.feature_dim(), cfg.head, "projector.");
  student_->finalize();
  teacher_->finalize();
  // The EMA pass relies on the teacher's parameters being a prefix of the student's layout.
  const auto& se = student_->entries();
  const auto& te = teacher_->entries();
  for (size_t i = 0; i < te.size(); ++i) {
    MIRA_CHECK(se[i].name == te[i].name && se[i].offset == te[i].offset && se[i].kind == te[i].kind,
               "MiraModel: teacher layout diverges from the student's at ", te[i].name);
  }
}

void MiraModel::init(uint64_t seed) {
  student_->clear_casts();
  s_backbone_->init(seed);
  s_proj_->init(seed);
  protos_->init(seed);
  reset_teacher();
}

void MiraModel::reset_teacher() {
  student_->clear_casts();
  teacher_->flat_params().copy_(student_->flat_params().slice_batch(0, teacher_->flat_params().numel()));
  teacher_->flat_buffers().copy_(student_->flat_buffers().slice_batch(0, teacher_->flat_buffers().numel()));
}

namespace {
// Sets the BN groups of a network for one forward, back to 1 afterwards (also on a throw).
class BnGroups {
 public:
  BnGroups(std::vector<BatchNorm*> bns, int groups) : bns_(std::move(bns)) {
    MIRA_CHECK(groups >= 1, "BN groups must be >= 1, got ", groups);
    for (BatchNorm* b : bns_) b->groups = groups;
  }
  ~BnGroups() {
    for (BatchNorm* b : bns_) b->groups = 1;
  }
  BnGroups(const BnGroups&) = delete;
  BnGroups& operator=(const BnGroups&) = delete;

 private:
  std::vector<BatchNorm*> bns_;
};
}  // namespace

Tensor MiraModel::student_logits(const Tensor& x, int groups) {
  BnGroups g(student_bns(), groups);
  const Tensor z = s_proj_->forward(s_backbone_->forward(ops::cast(x, compute_), true), true);
  return protos_->forward(ops::cast(z, dtype_));
}

Tensor MiraModel::teacher_logits(const Tensor& x, int groups) {
  NoGradGuard ng;
  BnGroups g(teacher_bns(), groups);
  const Tensor z = t_proj_->forward(t_backbone_->forward(ops::cast(x, compute_), true), true);
  return protos_->forward(ops::cast(z, dtype_));
}

Tensor MiraModel::features(const Tensor& x, bool teacher) {
  NoGradGuard ng;
  return ops::cast((teacher ? t_backbone_ : s_backbone_)->forward(ops::cast(x, compute_), false), dtype_);
}

void MiraModel::set_comm(Communicator* comm, bool equal_rows) {
  for (BatchNorm* b : student_bns()) {
    b->comm = comm;
    b->equal_rows = equal_rows;
  }
  for (BatchNorm* b : teacher_bns()) {
    b->comm = comm;
    b->equal_rows = equal_rows;
  }
}

void MiraModel::ema_update(double m) { mira::ema_update(teacher_->flat_params(), student_->flat_params(), m); }

std::vector<BatchNorm*> MiraModel::student_bns() {
  std::vector<BatchNorm*> v = s_backbone_->batch_norms();
  for (BatchNorm* b : s_proj_->batch_norms()) v.push_back(b);
  return v;
}

std::vector<BatchNorm*> MiraModel::teacher_bns() {
  std::vector<BatchNorm*> v = t_backbone_->batch_norms();
  for (BatchNorm* b : t_proj_->batch_norms()) v.push_back(b);
  return v;
}

NamedTensors MiraModel::state() {
  NamedTensors out;
  append_state(out, *student_, student_bns(), "", "");
  append_state(out, *teacher_, teacher_bns(), "", "ema.");
  return out;
}

void MiraModel::load_state(const SafetensorsFile& f) {
  student_->clear_casts();
  // Student names have no file prefix, so its pass must not count the teacher's "ema." entries.
  models::load_state(*student_, student_bns(), f, "", "", true, {"ema."});
  models::load_state(*teacher_, teacher_bns(), f, "", "ema.", true);
}

}  // namespace mira::models
