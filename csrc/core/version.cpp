// The library version string (CMake's project version).
#include "flashmtp.h"

namespace flashmtp {

const char *version() { return FLASHMTP_VERSION; }

}  // namespace flashmtp
