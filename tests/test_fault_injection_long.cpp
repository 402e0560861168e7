// labels: cpu slow
// The long fault-injection run: test_fault_injection with 150 SIGKILLs (about half timed on a
// checkpoint write). Overridable with MIRA_FI_KILLS.
#define MIRA_FI_KILLS 150
#include "test_fault_injection.cpp"
