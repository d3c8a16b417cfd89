# MicroPython user C modules of this project, for the CMake-based ports (esp32, rp2):
#   make -C ports/rp2 USER_C_MODULES=/abs/path/micropython_modules/micropython.cmake
# The make-based ports take the folder itself: USER_C_MODULES=/abs/path/micropython_modules
include(${CMAKE_CURRENT_LIST_DIR}/tinymp/micropython.cmake)
