#pragma once

#include <sys/types.h>

#include <optional>
#include <string>

namespace meridian::test_support {

// The System V shared memory segment a PostgreSQL postmaster records on line 7 of
// <data>/postmaster.pid ("key id"). Its backends stay attached until they exit, so the attach
// count tells whether processes of a killed server still run; and a SIGKILLed postmaster never
// removes it (56 bytes each), so whoever cleans up after one should. Internal to this folder.
struct PostmasterShmem {
  key_t key = 0;
  int id = -1;
};

[[nodiscard]] std::optional<PostmasterShmem> ReadPostmasterShmem(const std::string& data_dir);

// Processes attached to the segment; -1 if it is gone or the id now names another segment.
[[nodiscard]] int ShmemAttachedCount(const PostmasterShmem& shmem);

// Removes the segment if it still is this one (same key) and nothing is attached.
void RemoveShmemIfUnattached(const PostmasterShmem& shmem);

}  // namespace meridian::test_support
