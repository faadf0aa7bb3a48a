#include "tests/support/pg_shmem.h"

#include <sys/ipc.h>
#include <sys/shm.h>

#include <fstream>
#include <sstream>

namespace meridian::test_support {

std::optional<PostmasterShmem> ReadPostmasterShmem(const std::string& data_dir) {
  std::ifstream in(data_dir + "/postmaster.pid");
  std::string line;
  for (int i = 1; i <= 7 && std::getline(in, line); ++i) {
    if (i != 7) continue;
    std::istringstream fields(line);
    long key = 0;
    int id = -1;
    if (fields >> key >> id && id >= 0) return PostmasterShmem{static_cast<key_t>(key), id};
  }
  return std::nullopt;
}

int ShmemAttachedCount(const PostmasterShmem& shmem) {
  struct shmid_ds ds {};
  // Ids are reused after removal; the key tells whether the id still names this segment.
  if (shmctl(shmem.id, IPC_STAT, &ds) != 0 || ds.shm_perm.__key != shmem.key) return -1;
  return static_cast<int>(ds.shm_nattch);
}

void RemoveShmemIfUnattached(const PostmasterShmem& shmem) {
  if (ShmemAttachedCount(shmem) == 0) shmctl(shmem.id, IPC_RMID, nullptr);
}

}  // namespace meridian::test_support
