// The communicator of a multi-process run. Processes are launched by MPI (mpirun, or srun
// under Slurm); MPI bootstraps the run and reduces host buffers, NCCL (bootstrapped over MPI:
// rank 0's ncclUniqueId is broadcast) reduces device buffers in builds that have it, otherwise
// device buffers are staged through the host.
//
// No collective waits forever: each one is started non-blocking and polled, and when it has
// not completed within the timeout (a rank died or hangs) it throws mira::Error naming the
// rank, the operation and the timeout, so the app can report and exit; mpirun then stops the
// others. NCCL operations are polled the same way and the communicator is aborted on timeout.
#pragma once

#include <memory>

#include "engine/comm.h"

namespace mira {

// True when this process was started by an MPI launcher (Open MPI, MPICH/PMI, Slurm PMIx).
bool launched_by_mpi();
// True when the build has MPI.
bool mpi_available();

// The world communicator: MPI when the build has it and the process was launched by MPI,
// else the process-wide LocalComm (world size 1). timeout_s bounds every collective.
// The first call initialises MPI; MPI is finalised at process exit.
Communicator& world_comm(double timeout_s = 600.0);

// After a fatal error in a multi-process run: stops every rank (MPI_Abort) so none is left
// waiting in a collective. Does nothing in a single-process run. Never returns when it aborts.
void abort_world(int exit_code);

}  // namespace mira
