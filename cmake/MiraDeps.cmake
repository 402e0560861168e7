# System dependencies, each found with a message that names the Debian package to install
# (tools/setup.sh installs all of them).
find_package(Threads REQUIRED)

find_package(nlohmann_json 3 QUIET)
if(NOT nlohmann_json_FOUND)
  message(FATAL_ERROR "nlohmann/json not found: apt-get install nlohmann-json3-dev (or run tools/setup.sh)")
endif()

find_path(DOCTEST_INCLUDE_DIR doctest/doctest.h)
if(NOT DOCTEST_INCLUDE_DIR)
  message(FATAL_ERROR "doctest not found: apt-get install doctest-dev (or run tools/setup.sh)")
endif()

# OpenBLAS: prefer the pthread variant's cblas header; static when the build is carried
# to a machine without Debian's libraries.
find_path(MIRA_CBLAS_INCLUDE cblas.h
  PATHS /usr/include/x86_64-linux-gnu/openblas-pthread /usr/include/openblas /usr/include/x86_64-linux-gnu
  NO_DEFAULT_PATH)
if(NOT MIRA_CBLAS_INCLUDE)
  find_path(MIRA_CBLAS_INCLUDE cblas.h)
endif()
if(MIRA_STATIC_DEPS)
  set(_blas_names libopenblas.a)
else()
  set(_blas_names openblas)
endif()
find_library(MIRA_BLAS_LIB NAMES ${_blas_names}
  PATHS /usr/lib/x86_64-linux-gnu/openblas-pthread /usr/lib/x86_64-linux-gnu)
if(NOT MIRA_CBLAS_INCLUDE OR NOT MIRA_BLAS_LIB)
  message(FATAL_ERROR "OpenBLAS not found: apt-get install libopenblas-dev (or run tools/setup.sh)")
endif()
add_library(mira::blas INTERFACE IMPORTED)
target_include_directories(mira::blas INTERFACE ${MIRA_CBLAS_INCLUDE})
target_link_libraries(mira::blas INTERFACE ${MIRA_BLAS_LIB})
if(MIRA_STATIC_DEPS)
  find_library(MIRA_GFORTRAN_LIB NAMES gfortran libgfortran.so.5)
  target_link_libraries(mira::blas INTERFACE ${MIRA_GFORTRAN_LIB} Threads::Threads m)
endif()
