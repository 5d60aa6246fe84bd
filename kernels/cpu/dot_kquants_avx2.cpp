// (in progress) kernels contributed through kernel_table_fill_avx2_kquants.
#include "../kernel_fill.h"

namespace flashmtp {

void kernel_table_fill_avx2_kquants(KernelTable &table) { (void)table; }

}  // namespace flashmtp
