// MIRA_CPU_CLONES: compile a hot loop for the baseline ISA and for x86-64-v3 (AVX2) and v4
// (AVX-512), the best picked once at load time (GCC function multi-versioning), so one binary
// runs anywhere and uses the wider vectors where the CPU has them. The build turns off FMA
// contraction (-ffp-contract=off), so every clone computes the same bits as the baseline.
// Elsewhere (other compilers, other architectures, MIRA_NO_ISA_CLONES) it expands to nothing.
#pragma once

// GCC 11 is the first to know the x86-64-v3 / v4 level names; an older GCC builds the baseline.
#if defined(__x86_64__) && defined(__GNUC__) && __GNUC__ >= 11 && !defined(__clang__) && !defined(MIRA_NO_ISA_CLONES)
#define MIRA_CPU_CLONES __attribute__((target_clones("default", "arch=x86-64-v3", "arch=x86-64-v4")))
#else
#define MIRA_CPU_CLONES
#endif
