# The region-loss drill (failover/drill*.{h,cc}, failover/report.{h,cc}; see failover/DRILL.md),
# included by failover/CMakeLists.txt, which links meridian_failover_drill into meridianctl.
add_library(meridian_failover_drill STATIC
  ${CMAKE_CURRENT_LIST_DIR}/drill.cc
  ${CMAKE_CURRENT_LIST_DIR}/drill_analysis.cc
  ${CMAKE_CURRENT_LIST_DIR}/drill_cluster.cc
  ${CMAKE_CURRENT_LIST_DIR}/drill_db.cc
  ${CMAKE_CURRENT_LIST_DIR}/report.cc
)
target_include_directories(meridian_failover_drill PUBLIC ${PROJECT_SOURCE_DIR})
target_link_libraries(meridian_failover_drill
  PUBLIC meridian_failover absl::status absl::statusor nlohmann_json::nlohmann_json
  PRIVATE PkgConfig::PQXX yaml-cpp absl::strings absl::str_format Threads::Threads)

# The drill starts meridian-loadgen (tests/load, defined later): building meridianctl builds it.
add_dependencies(meridian_failover_drill meridian-loadgen)

add_executable(meridian_drill_test ${CMAKE_CURRENT_LIST_DIR}/drill_test.cc)
target_link_libraries(meridian_drill_test PRIVATE
  meridian_failover_drill nlohmann_json::nlohmann_json GTest::gtest GTest::gtest_main)
gtest_discover_tests(meridian_drill_test DISCOVERY_TIMEOUT 60 PROPERTIES LABELS "unit")
