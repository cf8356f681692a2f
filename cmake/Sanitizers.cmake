# -DEVALD_SANITIZE=address,undefined turns sanitizers on for every target.
if(EVALD_SANITIZE)
  string(REPLACE "," ";" _evald_sanitizers "${EVALD_SANITIZE}")
  foreach(_s IN LISTS _evald_sanitizers)
    add_compile_options(-fsanitize=${_s} -fno-omit-frame-pointer)
    add_link_options(-fsanitize=${_s})
  endforeach()
endif()
