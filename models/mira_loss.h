// The MIRA training objective (paper Eq. 8 with multi-crop, official loss_func): views
// [g1, g2, l1..lL]; every view except g1 predicts the target of g1, every view except g2
// predicts the target of g2; cross-entropy -sum_j T_ij log softmax(q / tau_s)_j averaged
// uniformly over all (target, view) pairs and rows. Targets carry no gradient.
#pragma once

#include <vector>

#include "engine/tensor.h"

namespace mira::models {

// student_logits: one (N, K) tensor per view, the two global views first, all with the same N;
// targets: (N, K) for view 0 and for view 1.
Tensor mira_loss(const std::vector<Tensor>& student_logits, const Tensor& target0, const Tensor& target1,
                 double tau_s);

}  // namespace mira::models
