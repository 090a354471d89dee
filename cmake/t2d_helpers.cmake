# Helpers shared by every folder: warning flags for project targets and CTest registration.

# Project code compiles warning-clean under these; third-party headers come in as SYSTEM.
function(t2d_warnings target)
  target_compile_options(${target} PRIVATE -Wall -Wextra -Wpedantic -Wshadow -Wnon-virtual-dtor
    # Project code never reads errno after math calls; without this, sqrt blocks vectorisation.
    -fno-math-errno)
  if(T2D_WERROR)
    target_compile_options(${target} PRIVATE -Werror)
  endif()
endfunction()

# t2d_library(NAME SOURCES a.cc b.cc ... [PUBLIC_LIBS ...] [PRIVATE_LIBS ...])
function(t2d_library name)
  cmake_parse_arguments(A "" "" "SOURCES;PUBLIC_LIBS;PRIVATE_LIBS" ${ARGN})
  add_library(${name} STATIC ${A_SOURCES})
  target_include_directories(${name} PUBLIC ${PROJECT_SOURCE_DIR})
  target_link_libraries(${name} PUBLIC ${A_PUBLIC_LIBS} PRIVATE ${A_PRIVATE_LIBS})
  t2d_warnings(${name})
endfunction()

# MPI launcher flags for CTest: OpenMPI needs --oversubscribe on small machines and
# --allow-run-as-root when CI runs as root; MPICH rejects both, so add them only for OpenMPI.
execute_process(COMMAND ${MPIEXEC_EXECUTABLE} --version OUTPUT_VARIABLE _t2d_mpi_version ERROR_QUIET)
separate_arguments(T2D_MPIEXEC_PREFLAGS UNIX_COMMAND "${MPIEXEC_PREFLAGS}")
if(_t2d_mpi_version MATCHES "Open MPI|OpenRTE")
  list(APPEND T2D_MPIEXEC_PREFLAGS --oversubscribe --bind-to none)
  execute_process(COMMAND id -u OUTPUT_VARIABLE _t2d_uid OUTPUT_STRIP_TRAILING_WHITESPACE)
  if(_t2d_uid STREQUAL "0")
    list(APPEND T2D_MPIEXEC_PREFLAGS --allow-run-as-root)
  endif()
endif()
set(T2D_MPIEXEC_PREFLAGS ${T2D_MPIEXEC_PREFLAGS} CACHE INTERNAL "")

# t2d_test(NAME SOURCES ... LIBS ... [LABELS ...] [TIMEOUT s])
# One gtest executable, registered as one CTest entry (a process per binary keeps torch
# start-up cost at one per binary rather than one per TEST).
function(t2d_test name)
  cmake_parse_arguments(A "" "TIMEOUT" "SOURCES;LIBS;LABELS" ${ARGN})
  add_executable(${name} ${A_SOURCES})
  target_link_libraries(${name} PRIVATE ${A_LIBS} GTest::gtest GTest::gmock GTest::gtest_main)
  t2d_warnings(${name})
  if(NOT A_TIMEOUT)
    set(A_TIMEOUT 300)
  endif()
  add_test(NAME ${name} COMMAND ${name})
  set_tests_properties(${name} PROPERTIES TIMEOUT ${A_TIMEOUT} LABELS "unit;${A_LABELS}"
    ENVIRONMENT "GTEST_COLOR=no;T2D_SOURCE_DIR=${PROJECT_SOURCE_DIR}" SKIP_RETURN_CODE 77)
endfunction()

# t2d_mpi_test(NAME TARGET NP [ARGS ...]): runs an existing executable under mpiexec.
function(t2d_mpi_test name target np)
  add_test(NAME ${name}
    COMMAND ${MPIEXEC_EXECUTABLE} ${MPIEXEC_NUMPROC_FLAG} ${np} ${T2D_MPIEXEC_PREFLAGS}
            $<TARGET_FILE:${target}> ${MPIEXEC_POSTFLAGS} ${ARGN})
  set_tests_properties(${name} PROPERTIES PROCESSORS ${np} TIMEOUT 180 LABELS mpi
    ENVIRONMENT "GTEST_COLOR=no;T2D_SOURCE_DIR=${PROJECT_SOURCE_DIR};OMPI_MCA_plm=isolated;OMPI_MCA_btl_vader_single_copy_mechanism=none"
    SKIP_RETURN_CODE 77)
endfunction()

# t2d_gpu_test(NAME TARGET [NP]): a GPU test; the binary exits 77 (skipped) when no GPU is visible.
function(t2d_gpu_test name target)
  set(np 1)
  if(ARGC GREATER 2)
    set(np ${ARGV2})
  endif()
  t2d_mpi_test(${name} ${target} ${np})
  set_tests_properties(${name} PROPERTIES LABELS "gpu;mpi")
endfunction()

# t2d_proto_library(NAME PROTOS a.proto ... [DEPS other_proto_lib ...])
# Generates C++ for protos named relative to the repository root, so that "configs/x.proto"
# becomes <build>/gen/configs/x.pb.h and is included as "configs/x.pb.h" everywhere.
function(t2d_proto_library name)
  cmake_parse_arguments(A "" "" "PROTOS;DEPS" ${ARGN})
  # protoc writes into gen/<folder>/ but does not create it (Ninja does, Makefiles do not).
  file(MAKE_DIRECTORY ${PROJECT_BINARY_DIR}/gen)
  set(srcs)
  foreach(proto ${A_PROTOS})
    file(RELATIVE_PATH rel ${PROJECT_SOURCE_DIR} ${CMAKE_CURRENT_SOURCE_DIR}/${proto})
    string(REGEX REPLACE "\\.proto$" "" stem ${rel})
    set(out_cc ${PROJECT_BINARY_DIR}/gen/${stem}.pb.cc)
    set(out_h ${PROJECT_BINARY_DIR}/gen/${stem}.pb.h)
    add_custom_command(OUTPUT ${out_cc} ${out_h}
      COMMAND protobuf::protoc -I${PROJECT_SOURCE_DIR} --cpp_out=${PROJECT_BINARY_DIR}/gen ${rel}
      DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/${proto} protobuf::protoc
      WORKING_DIRECTORY ${PROJECT_SOURCE_DIR}
      COMMENT "protoc ${rel}")
    list(APPEND srcs ${out_cc})
  endforeach()
  add_library(${name} STATIC ${srcs})
  target_include_directories(${name} SYSTEM PUBLIC ${PROJECT_BINARY_DIR}/gen)
  target_link_libraries(${name} PUBLIC protobuf::libprotobuf ${A_DEPS})
endfunction()
