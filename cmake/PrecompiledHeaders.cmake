# Precompiled headers for the targets whose translation units all parse the same heavy headers.
# nlohmann/json and Catch2 are single headers of 25,000 and 17,000 lines that nearly every test and
# most library files include; parsing them once per target instead of once per file takes about
# 40% off the compile time of a test file, which is most of CI's time on a 2-core machine (the
# tree is built twice there: once plain, once under ASan+UBSan).
option(EVALD_PCH "Precompile the common heavy headers (nlohmann/json, spdlog, Catch2)" ON)

function(evald_precompile_headers target)
  if(NOT EVALD_PCH OR NOT TARGET ${target})
    return()
  endif()
  target_precompile_headers(${target} PRIVATE <nlohmann/json.hpp> <string> <vector> <map>
                                              <optional> <chrono> <filesystem> ${ARGN})
endfunction()
