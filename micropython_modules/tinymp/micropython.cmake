# tinymp as a MicroPython user C module (CMake-based ports: esp32, rp2).
# Included from ../micropython.cmake; build with USER_C_MODULES=/abs/path/micropython_modules/micropython.cmake
add_library(usermod_tinymp INTERFACE)

file(GLOB TINYMP_CORE_SOURCES
    ${CMAKE_CURRENT_LIST_DIR}/core/*.c
    ${CMAKE_CURRENT_LIST_DIR}/core/*/*.c
)
list(SORT TINYMP_CORE_SOURCES)

target_sources(usermod_tinymp INTERFACE
    ${CMAKE_CURRENT_LIST_DIR}/modtinymp.c
    ${TINYMP_CORE_SOURCES}
)

target_include_directories(usermod_tinymp INTERFACE
    ${CMAKE_CURRENT_LIST_DIR}
    ${CMAKE_CURRENT_LIST_DIR}/core
)

target_link_libraries(usermod INTERFACE usermod_tinymp)
