# Warnings are kept high and clean on every evald target (STYLE.md section 10). CI configures with
# -DEVALD_WERROR=ON (scripts/setup.sh does when CI=true), so a new warning fails the build there
# instead of scrolling past in a log nobody reads.
option(EVALD_WERROR "Treat compiler warnings as errors on evald targets" OFF)

function(evald_set_warnings target)
  target_compile_options(${target} PRIVATE -Wall -Wextra -Wpedantic -Wshadow -Wnon-virtual-dtor
                                           -Wold-style-cast -Wcast-align -Wunused -Woverloaded-virtual)
  if(EVALD_WERROR)
    target_compile_options(${target} PRIVATE -Werror)
  endif()
endfunction()
