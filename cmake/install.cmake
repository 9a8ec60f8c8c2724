# `cmake --install`: the library, its headers, a CMake package (find_package(conveyor),
# target conveyor::conveyor) and a pkg-config file (conveyor.pc); the command when built.
include(CMakePackageConfigHelpers)

set(CONVEYOR_CMAKE_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/conveyor)

install(TARGETS conveyor EXPORT conveyorTargets
        ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
        LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
        RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
install(DIRECTORY include/conveyor ${CMAKE_CURRENT_BINARY_DIR}/include/conveyor
        DESTINATION ${CMAKE_INSTALL_INCLUDEDIR} FILES_MATCHING PATTERN "*.hpp")
install(EXPORT conveyorTargets NAMESPACE conveyor:: DESTINATION ${CONVEYOR_CMAKE_DIR})

configure_package_config_file(cmake/conveyorConfig.cmake.in
  ${CMAKE_CURRENT_BINARY_DIR}/conveyorConfig.cmake INSTALL_DESTINATION ${CONVEYOR_CMAKE_DIR})
write_basic_package_version_file(${CMAKE_CURRENT_BINARY_DIR}/conveyorConfigVersion.cmake
  COMPATIBILITY SameMinorVersion)
install(FILES ${CMAKE_CURRENT_BINARY_DIR}/conveyorConfig.cmake
              ${CMAKE_CURRENT_BINARY_DIR}/conveyorConfigVersion.cmake
        DESTINATION ${CONVEYOR_CMAKE_DIR})

# pkg-config: the library is static, so what it links travels in Libs.private and
# Requires.private (`pkg-config --static --libs conveyor`).
configure_file(cmake/conveyor.pc.in ${CMAKE_CURRENT_BINARY_DIR}/conveyor.pc @ONLY)
install(FILES ${CMAKE_CURRENT_BINARY_DIR}/conveyor.pc
        DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig)

if(CONVEYOR_BUILD_CLI)
  install(TARGETS conveyor_cli RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
endif()
