# -DEVALD_SANITIZE=address,undefined turns sanitizers on for every target. Undefined behaviour
# aborts (-fno-sanitize-recover) instead of printing and carrying on, so a test that hits UB fails.
#
# UBSan leaves out the checks that instrument every pointer use (evald_ubsan_not_checked): they
# made the test tree's build 1.8 times as long (2,660 against 1,450 compile-seconds, gcc 12 -O1;
# Boost.Beast's http_server.cpp alone 173 s against 80 s) and find little that ASan does not. A null or out-of-object access faults or is an
# ASan report; x86-64 tolerates misaligned loads; the code has no class hierarchy to downcast
# wrongly (vptr). What stays is what ASan cannot see: signed overflow, shifts, division by zero,
# bad bool and enum values, out-of-bounds array indexes, float casts, falling off a function, and
# the rest of -fsanitize=undefined.
set(evald_ubsan_not_checked "vptr,alignment,null,object-size,pointer-overflow")
if(EVALD_SANITIZE)
  string(REPLACE "," ";" _evald_sanitizers "${EVALD_SANITIZE}")
  foreach(_s IN LISTS _evald_sanitizers)
    add_compile_options(-fsanitize=${_s})
    add_link_options(-fsanitize=${_s})
  endforeach()
  add_compile_options(-fno-omit-frame-pointer)
  if("undefined" IN_LIST _evald_sanitizers)
    add_compile_options(-fno-sanitize-recover=undefined
                        -fno-sanitize=${evald_ubsan_not_checked})
    add_link_options(-fno-sanitize-recover=undefined -fno-sanitize=${evald_ubsan_not_checked})
  endif()
endif()

# -DEVALD_FUZZ=ON (clang only) builds the libFuzzer targets in tests/fuzz/. Everything is compiled
# with coverage instrumentation (fuzzer-no-link) plus ASan and UBSan, so the fuzzer is guided by,
# and checks, our code; only the fuzz executables link libFuzzer's main. Use a build
# directory of its own (scripts/fuzz.sh uses build-fuzz/), never the gcc build.
if(EVALD_FUZZ)
  if(NOT CMAKE_CXX_COMPILER_ID STREQUAL "Clang")
    message(FATAL_ERROR "EVALD_FUZZ=ON needs clang (libFuzzer); configure with "
                        "-DCMAKE_CXX_COMPILER=clang++ in a separate build directory")
  endif()
  if(EVALD_SANITIZE)
    message(FATAL_ERROR "EVALD_FUZZ=ON already turns on address,undefined; leave EVALD_SANITIZE "
                        "empty")
  endif()
  add_compile_options(-fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=undefined
                      -fno-sanitize=${evald_ubsan_not_checked} -fno-omit-frame-pointer)
  add_link_options(-fsanitize=address,undefined -fno-sanitize-recover=undefined
                   -fno-sanitize=${evald_ubsan_not_checked})
endif()
