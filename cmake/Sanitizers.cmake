# -DEVALD_SANITIZE=address,undefined turns sanitizers on for every target. Undefined behaviour
# aborts (-fno-sanitize-recover) instead of printing and carrying on, so a test that hits UB fails.
if(EVALD_SANITIZE)
  string(REPLACE "," ";" _evald_sanitizers "${EVALD_SANITIZE}")
  foreach(_s IN LISTS _evald_sanitizers)
    add_compile_options(-fsanitize=${_s})
    add_link_options(-fsanitize=${_s})
  endforeach()
  add_compile_options(-fno-omit-frame-pointer)
  if("undefined" IN_LIST _evald_sanitizers)
    add_compile_options(-fno-sanitize-recover=undefined)
    add_link_options(-fno-sanitize-recover=undefined)
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
                      -fno-omit-frame-pointer)
  add_link_options(-fsanitize=address,undefined -fno-sanitize-recover=undefined)
endif()
