// Optimiser-side passes over flat parameter buffers (one kernel launch each, thanks to the
// ParamStore layout).
#pragma once

#include "engine/tensor.h"

namespace mira {

// ema = m * ema + (1 - m) * online[0 : ema.numel()], elementwise on flat buffers. The online
// buffer may be longer (the student's store ends with the prototypes, which the teacher lacks).
void ema_update(const Tensor& ema, const Tensor& online, double m);

}  // namespace mira
