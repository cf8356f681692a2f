# Warnings are kept high and clean on every evald target (STYLE.md section 10). CI configures with
# -DEVALD_WERROR=ON (scripts/setup.sh does when CI=true), so a new warning fails the build there
# instead of scrolling past in a log nobody reads.
option(EVALD_WERROR "Treat compiler warnings as errors on evald targets" OFF)

function(evald_set_warnings target)
  target_compile_options(${target} PRIVATE -Wall -Wextra -Wpedantic -Wshadow -Wnon-virtual-dtor
                                           -Wold-style-cast -Wcast-align -Wunused -Woverloaded-virtual)
  if(EVALD_WERROR)
    target_compile_options(${target} PRIVATE -Werror)
    # GCC 12's flow-sensitive string warnings fire on inlined std::string code it cannot prove
    # safe (GCC bugs 105329, 105651: `"text" + std::string` at -O2/-O3 "exceeds maximum object
    # size"). They stay warnings so they are still seen, but cannot fail a build on library code.
    if(CMAKE_CXX_COMPILER_ID STREQUAL "GNU" AND CMAKE_CXX_COMPILER_VERSION VERSION_GREATER_EQUAL 12)
      target_compile_options(${target} PRIVATE -Wno-error=stringop-overflow -Wno-error=restrict
                                               -Wno-error=array-bounds -Wno-error=stringop-overread)
    endif()
    # Under ASan GCC 12 also reports -Wmaybe-uninitialized inside libstdc++'s <regex> (the
    # moved-from std::function of a _State): the instrumentation hides the initialisation from
    # its flow analysis. The sanitized tree is CI's build, so these too stay warnings only.
    if(CMAKE_CXX_COMPILER_ID STREQUAL "GNU" AND EVALD_SANITIZE)
      target_compile_options(${target} PRIVATE -Wno-error=maybe-uninitialized)
    endif()
  endif()
endfunction()
